"""Recipes for encoder, classifier and vision graphs (INT8 and FP16): every candidate is
measured against the input artifact's outputs on real data, and, with a budget, the most
sensitive nodes are kept in higher precision until it holds (sensitivity.py).  Without a
budget, a recipe with a worst-case guard holds it on the calibration data.  The winner is
also measured against the source framework's golden outputs.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from ..artifact import Artifact
from ..data import ExampleSet, examples_for
from ..errors import ArtifactError, CalibrationDataError, InvalidOptionError, ModelInputError, QuantizationError
from ..parity import ParityBudget, ParityReport, compare_outputs, measure
from ..runtime.onnxrt import QUIET_CPU, OnnxRuntimeRunner, SessionSettings
from . import graph
from .options import QuantizeOptions
from .recipes import Outcome, QuantizeJob, Recipe
from .sensitivity import FallbackResult, keep_sensitive_nodes, leave_one_out_ranking
from .targets import Target, detect_host, runs_here

# Q/DQ computed in float: no fusion into this host's integer kernels (see candidate_settings).
SIMULATED_INT8 = SessionSettings(device="cpu", spinning=False, optimization="basic")


@dataclass
class EncoderJob(QuantizeJob):
    per_channel: bool = True
    calibration: ExampleSet | None = None
    evaluation: ExampleSet | None = None
    first_candidate: Path | None = None      # nothing kept, already built while preparing (structure.py)


class EncoderRecipe(Recipe):
    default_min_cosine: ClassVar[float] = 0.95    # the gate when no budget is given: refuse a broken model
    needs_calibration_file: ClassVar[bool] = False
    # Without a budget, hold the worst case on the calibration data to this, keeping at most
    # guard_max_kept nodes in higher precision (None: no guard).
    guard: ClassVar[ParityBudget | None] = None
    guard_max_kept: ClassVar[int] = 6

    # ------------------------------------------------------------------ what each recipe says

    def check(self, options: QuantizeOptions, target: Target) -> None:
        language_model_options = [name for name, value in (("--max-token-disagreement", options.max_token_disagreement),
                                                           ("--max-perplexity-increase", options.max_perplexity_increase))
                                  if value is not None]
        if language_model_options:
            raise InvalidOptionError(f"{', '.join(language_model_options)} gate causal LMs (--mode int4 or "
                                     f"int8-weight-only); --mode {self.mode} is gated on --min-cosine and the like")
        if self.needs_calibration_file and not options.calib:
            raise InvalidOptionError(f"--mode {self.mode} needs calibration data: --calib FILE "
                                     "(text, jsonl, npz or an image folder)")

    def fallback_limit(self, candidates: int, max_kept: int | None) -> int | None:
        """How many ranked candidates a budget may keep in higher precision."""
        return max_kept

    def prepare(self, job: EncoderJob) -> Path:
        """The FP32 graph every candidate starts from."""
        raise NotImplementedError

    def build(self, job: EncoderJob, prepared: Path, dest: Path, exclude: list[str]) -> None:
        """Write a candidate to ``dest``, with the nodes in ``exclude`` kept in higher precision."""
        raise NotImplementedError

    def candidates(self, job: EncoderJob, prepared: Path) -> list[str]:
        """Nodes the accuracy-aware fallback may keep in higher precision."""
        raise NotImplementedError

    def rank(self, job: EncoderJob, prepared: Path, build, evaluate) -> list[tuple[str, float]]:
        """Candidates, most sensitive first, with their sensitivity (leave-one-out by default)."""
        return leave_one_out_ranking(self.candidates(job, prepared), build, evaluate, job.say)

    def hold(self, job: EncoderJob, prepared: Path, build, check: Callable[[Path], ParityReport],
             first: FallbackResult, latency, max_kept: int | None, required: bool) -> FallbackResult:
        """From ``first``, keep the most sensitive nodes in higher precision until ``check``
        passes (at most ``max_kept``); when it cannot: raise if ``required``, else the best."""
        ranking = self.rank(job, prepared, build, check)
        return keep_sensitive_nodes(ranking, build, check, first, latency,
                                    max_kept=self.fallback_limit(len(ranking), max_kept), required=required,
                                    progress=job.say)

    def finish(self, job: EncoderJob, result: FallbackResult) -> FallbackResult:
        """Last checks on the chosen candidate."""
        return result

    def precision(self, job: EncoderJob, result: FallbackResult, operators: dict[str, int]) -> dict[str, Any]:
        raise NotImplementedError

    def lineage_parameters(self, job: EncoderJob) -> dict[str, Any]:
        options = job.options
        return {**super().lineage_parameters(job), "per_channel": job.per_channel, "optimize": options.optimize,
                "min_cosine": options.min_cosine, "max_abs_error": options.max_abs_error,
                "min_top1_agreement": options.min_top1_agreement, "min_p01_cosine": options.min_p01_cosine}

    # ------------------------------------------------------------------ the run

    def run(self, base: QuantizeJob) -> Outcome:
        options, source, target = base.options, base.source, base.target
        budget = options.budget()
        gate = budget if budget.given else ParityBudget(min_cosine=self.default_min_cosine)
        calibration = examples_for(source, options.calib, role="calib")
        evaluation = examples_for(source, options.data, role="eval")
        base.say(f"calibration: {calibration.description}; evaluation: {evaluation.description}")
        guarded = self.guard is not None and options.worst_case_guard and not budget.given
        expected, calibration_expected = _reference(source, calibration, evaluation, guarded)
        per_channel = target.per_channel if options.per_channel is None else options.per_channel
        # The same notes, levers and details lists as ``base``: what the recipe records reaches the stage.
        job = EncoderJob(**vars(base), per_channel=per_channel, calibration=calibration, evaluation=evaluation)
        settings = candidate_settings(self, target)
        prepared = self.prepare(job)
        build = self._builder(job, prepared)

        def evaluate(model_file: Path, examples=evaluation, outputs=expected, thresholds=gate) -> ParityReport:
            try:
                with OnnxRuntimeRunner(model_file, settings) as candidate:
                    return measure(candidate, outputs, examples, source.task, thresholds,
                                   reference_name=f"input artifact '{source.path}'")
            except (ArtifactError, ModelInputError) as exc:
                raise QuantizationError(f"the {options.mode} model does not run in ONNX Runtime: {exc}") from exc

        job.say(f"quantizing ({options.mode}, target {target.name}{' (detected)' if job.target_detected else ''})...")
        first_file = job.first_candidate or build([])
        result = FallbackResult(first_file, evaluate(first_file), [])
        with LatencyProbe(evaluation) as latency:
            if budget.given and not result.report.passed:       # a budget the first candidate meets needs no search
                result = self.hold(job, prepared, build, evaluate, result, latency, options.max_kept_nodes, True)
            elif calibration_expected is not None:
                result = self._guard(job, prepared, build, evaluate, result, calibration_expected, latency)
        result.report.raise_for_failure(f"the {options.mode} model")
        result = self.finish(job, result)
        parity = {"quantize": result.report.to_dict()}
        golden = _golden_parity(source, result.model_file, settings)
        if golden:
            parity["quantize-vs-source"] = golden
        if settings is SIMULATED_INT8:
            job.notes.append(f"parity measured with Q/DQ computed in float (what {target.name} computes in integers): "
                             f"this machine ({detect_host()}) is not the target, and its own INT8 kernels differ")
        operators = operator_counts(graph.load(result.model_file))
        precision = self.precision(job, result, operators)
        if self.mode.startswith("int8"):
            precision["speed"] = self._speed(job, result.model_file, evaluation)
        return Outcome(result.model_file, precision, parity, self.lineage_parameters(job))

    def _speed(self, job: EncoderJob, model_file: Path, evaluation: ExampleSet) -> dict:
        """INT8 against FP32 on this host, when this host is the target (another machine's
        speed cannot be measured here)."""
        from .speedcheck import speed_against_fp32, verdict

        if not runs_here(job.target):
            return {"measured": False, "reason": f"target {job.target.name} is not this host ({detect_host()})"}
        feeds = evaluation.first_example()
        job.say("timing INT8 against FP32 on this host (interleaved rounds)...")
        record = {"measured": True, **speed_against_fp32(job.source.model_path, model_file, feeds)}
        warning = verdict(record)
        if warning:
            job.say(f"warning: {warning}")
        return record

    def _builder(self, job: EncoderJob, prepared: Path | None, prefix: str = "candidate"
                 ) -> Callable[[list[str]], Path]:
        counter = itertools.count()

        def build(exclude: list[str], other_prepared: Path | None = None, split=None) -> Path:
            dest = job.work / f"{prefix}-{next(counter)}.onnx"
            try:
                with graph.without_preprocessing_advice():
                    if split is None:
                        self.build(job, other_prepared or prepared, dest, exclude)
                    else:
                        self.build(job, other_prepared or prepared, dest, exclude, split)
            except (InvalidOptionError, CalibrationDataError):
                raise
            except graph.tool_failures() as exc:
                # onnxruntime.quantization's failures on a graph it cannot handle.
                raise QuantizationError(f"{job.options.mode} quantization failed: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
            return dest
        return build

    def _guard(self, job: EncoderJob, prepared: Path, build, evaluate, first: FallbackResult, calibration_expected,
               latency) -> FallbackResult:
        """The worst-case guard: hold the recipe's budget on the calibration data (never on the
        evaluation data, which stays unseen), keeping at most a few nodes."""
        def on_calibration(model_file: Path) -> ParityReport:
            return evaluate(model_file, job.calibration, calibration_expected, self.guard)

        check = on_calibration(first.model_file)
        if check.passed:
            return first
        job.say(f"worst case on the calibration data: {check.failures[0]}; holding it...")
        trial = FallbackResult(first.model_file, check, [])
        limit = self.guard_max_kept if job.options.max_kept_nodes is None else job.options.max_kept_nodes
        guarded = self.hold(job, prepared, build, on_calibration, trial, latency, limit, False)
        figures = ", ".join(f"{k} {v:g}" for k, v in self.guard.thresholds().items())
        job.levers.append(f"worst-case guard ({figures} on calibration data): {len(guarded.kept)} node(s) kept in FP32")
        return FallbackResult(guarded.model_file, evaluate(guarded.model_file), guarded.kept, guarded.steps,
                              guarded.latency_ms, guarded.split)


def _reference(source: Artifact, calibration: ExampleSet, evaluation: ExampleSet, guarded: bool):
    """The input artifact's outputs on the evaluation data (and on the calibration data for
    the guard); mismatched data fails with its own message, not inside ORT's quantizer."""
    with OnnxRuntimeRunner(source.model_path, inputs=source.manifest.inputs) as reference:
        on_calibration = []
        for batch in calibration.batches:     # every batch checked; kept only for the guard (memory)
            outputs = _finite_outputs(reference, batch, "calibration", calibration)
            if guarded:
                on_calibration.append(outputs)
        expected = [_finite_outputs(reference, batch, "evaluation", evaluation) for batch in evaluation.batches]
        return expected, on_calibration if guarded else None


def _finite_outputs(reference, batch: dict[str, np.ndarray], role: str, examples: ExampleSet) -> dict:
    """The reference's outputs on one batch.  Data that does not fit the model, or on which the
    FP32 model's own outputs are NaN or infinite (values near float32's limit overflow it; ONNX
    Runtime's calibrator then failed with 'AssertionError: scale issue'), is refused as data."""
    try:
        outputs = reference.run_in_rows(batch)
    except ModelInputError as exc:
        raise CalibrationDataError(f"the {role} data does not fit the model: {exc}") from exc
    for name, value in outputs.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise CalibrationDataError(
                f"the FP32 model's output '{name}' is NaN or infinite on the {role} data ({examples.description}): "
                "non-finite outputs can be neither calibrated on nor compared; give data on which the model's "
                "outputs are finite (inputs like its real ones)")
    return outputs


class LatencyProbe:
    """A candidate's median latency on one evaluation example, timed in blocks alternating with
    the first (fully quantized) candidate: this machine's noise moves medians by up to 1.6x
    between rounds, so the cost of a kept node is read from one run.  Returns the candidate's
    latency scaled to the first candidate's, measured once.  Closes its sessions on exit."""

    def __init__(self, evaluation: ExampleSet):
        self.feeds = evaluation.first_example()
        self.first: OnnxRuntimeRunner | None = None
        self.first_ms: float | None = None

    def _block(self, runner) -> list[float]:
        samples = []
        for _ in range(8):
            start = time.perf_counter()
            runner.run(self.feeds)
            samples.append(time.perf_counter() - start)
        return samples

    def __call__(self, model_file: Path) -> float:
        if self.first is None:
            self.first = OnnxRuntimeRunner(model_file)
        with OnnxRuntimeRunner(model_file) as runner:
            for _ in range(2):
                runner.run(self.feeds)
                self.first.run(self.feeds)
            mine, theirs = [], []
            for _ in range(4):
                mine += self._block(runner)
                theirs += self._block(self.first)
        mine_ms, theirs_ms = (float(sorted(v)[len(v) // 2] * 1000) for v in (mine, theirs))
        self.first_ms = self.first_ms or theirs_ms
        return mine_ms / theirs_ms * self.first_ms

    def __enter__(self) -> "LatencyProbe":
        return self

    def __exit__(self, *exc) -> None:
        if self.first is not None:
            self.first.close()
            self.first = None


def candidate_settings(recipe: Recipe, target: Target) -> SessionSettings:
    """How candidates run for their parity checks.  On the target, ONNX Runtime's own INT8
    kernels.  For a Q/DQ graph quantized for another target, the Q/DQ pairs computed in
    float instead (no fusion): exact INT8 arithmetic up to float rounding, which is what the
    target computes, whereas this host's kernels may not be.  Measured: the digits CNN
    quantized for the gpu target (symmetric int8, no reduce_range) reads top-1 92% through
    this AVX2 machine's kernels, whose 16-bit intermediate sums saturate, and 98.7% simulated."""
    if recipe.mode == "int8-static" and not runs_here(target):
        return SIMULATED_INT8
    return QUIET_CPU


def _golden_parity(source: Artifact, model_file: Path, settings: SessionSettings) -> dict | None:
    """The candidate against the source framework's outputs recorded at export (no torch or
    Keras needed)."""
    golden = source.golden()
    if golden is None:
        return None
    inputs, outputs = golden
    with OnnxRuntimeRunner(model_file, settings) as runner:
        try:
            got = runner.run_in_rows(inputs)          # a static-shape graph takes fewer rows a call
        except ModelInputError as exc:
            raise ArtifactError(f"the golden inputs of '{source.path}' do not fit its model: {exc}") from exc
    return compare_outputs(outputs, got, task=source.task, token_mask=inputs.get("attention_mask"),
                           data="golden inputs (export)",
                           reference_name=f"{_golden_source(source)} (golden.npz)").to_dict()


def _golden_source(source: Artifact) -> str:
    """Who computed the golden outputs: the export's reference, up the lineage."""
    export = source.manifest.parity.get("export") or {}
    reference = str(export.get("reference", ""))
    return reference.split(" (")[0] if reference.startswith("Keras") else "PyTorch"


def operator_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
