"""``edgeport quantize``: the stage that drives a recipe.  Every run ends with a parity check
against the input artifact on real data, and, with a budget, keeps the most sensitive
nodes in higher precision until it holds (sensitivity.py).  Nothing is written unless the
gate passes.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from ..artifact import Artifact, copy_companions, finalize_manifest
from ..data import examples_for
from ..errors import ArtifactError, CalibrationDataError, InvalidOptionError, ModelInputError, QuantizationError, \
    require
from ..manifest import Manifest, tool_versions
from ..outputs import ARTIFACT, check_output, staged_output
from ..parity import ParityBudget, ParityReport, compare_outputs, measure, reference_outputs
from ..runtime.onnxrt import QUIET_CPU, OnnxRuntimeRunner, SessionSettings
from . import graph
from .options import QuantizeOptions
from .recipes import QuantizeJob, Recipe, recipe_for
from .sensitivity import FallbackResult, keep_sensitive_nodes
from .targets import Target, detect_host, get_target

# Q/DQ computed in float: no fusion into this host's integer kernels (see candidate_settings).
SIMULATED_INT8 = SessionSettings(device="cpu", spinning=False, optimization="basic")


def quantize(artifact_path, out, options: QuantizeOptions, progress=None, calibration_progress=None) -> Artifact:
    say = progress or (lambda message: None)
    options.check()
    recipe = recipe_for(options.mode)
    target, detected = get_target(options.target)
    recipe.check(options, target)
    if recipe.needs_calibration_file and not options.calib:
        raise InvalidOptionError(f"--mode {options.mode} needs calibration data: --calib FILE "
                                 "(text, jsonl, npz or an image folder)")
    budget = ParityBudget(options.min_cosine, options.max_abs_error, options.min_top1_agreement, options.min_p01_cosine)
    check_output(out, options.force, (artifact_path,), ARTIFACT)
    require("onnx", "quantize")
    source = Artifact.load(artifact_path)
    _check_source(source, artifact_path, options)
    if source.task == "text-generation":
        from .weight_only import quantize_causal_lm

        return quantize_causal_lm(source, out, options, recipe, target, detected, say)
    gate = budget if budget.given else ParityBudget(min_cosine=recipe.default_min_cosine)

    calibration = examples_for(source, options.calib, role="calib")
    evaluation = examples_for(source, options.data, role="eval")
    say(f"calibration: {calibration.description}; evaluation: {evaluation.description}")
    with OnnxRuntimeRunner(source.model_path, inputs=source.manifest.inputs) as reference:   # serves every check
        _check_calibration_runs(reference, calibration)
        try:
            expected = reference_outputs(reference, evaluation)
        except ModelInputError as exc:
            raise CalibrationDataError(f"the evaluation data does not fit the model: {exc}") from exc
        guarded = recipe.guard is not None and options.worst_case_guard and not budget.given
        calibration_expected = reference_outputs(reference, calibration) if guarded else None
    per_channel = target.per_channel if options.per_channel is None else options.per_channel
    settings = candidate_settings(recipe, target)

    with tempfile.TemporaryDirectory(prefix="edgeport-quantize-") as work_dir:
        job = QuantizeJob(source, options, target, detected, per_channel, calibration, evaluation, Path(work_dir),
                          say, calibration_progress)
        prepared = recipe.prepare(job)
        counter = itertools.count()

        def build(exclude: list[str]) -> Path:
            dest = job.work / f"candidate-{next(counter)}.onnx"
            try:
                with graph.without_preprocessing_advice():
                    recipe.build(job, prepared, dest, exclude)
            except (InvalidOptionError, CalibrationDataError):
                raise
            except (ValueError, RuntimeError, KeyError, IndexError, TypeError, AssertionError) as exc:
                # onnxruntime.quantization's failures on a graph it cannot handle.
                raise QuantizationError(f"{options.mode} quantization failed: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
            return dest

        def evaluate(model_file: Path, examples=evaluation, outputs=expected, thresholds=gate) -> ParityReport:
            try:
                with OnnxRuntimeRunner(model_file, settings) as candidate:
                    return measure(candidate, outputs, examples, source.task, thresholds,
                                   reference_name=f"input artifact '{source.path}'")
            except (ArtifactError, ModelInputError) as exc:
                raise QuantizationError(f"the {options.mode} model does not run in ONNX Runtime: {exc}") from exc

        say(f"quantizing ({options.mode}, target {target.name}{' (detected)' if detected else ''})...")
        first_file = build([])
        result = FallbackResult(first_file, evaluate(first_file), [])
        latency = _latency_probe(source, evaluation)
        if budget.given:
            ranking = recipe.rank(job, prepared, build, evaluate)
            limit = recipe.fallback_limit(len(ranking), options.max_kept_nodes)
            result = keep_sensitive_nodes(ranking, build, evaluate, result, latency, max_kept=limit, progress=say)
        elif calibration_expected is not None:
            result = _guard(recipe, job, prepared, build, evaluate, result, calibration, calibration_expected, latency)
        result.report.raise_for_failure(f"the {options.mode} model")
        result = recipe.finish(job, result, build)
        golden = _golden_parity(source, result.model_file, settings)
        if settings is SIMULATED_INT8:
            job.notes.append(f"parity measured with Q/DQ computed in float (what {target.name} computes in integers): "
                             f"this machine ({detect_host()}) is not the target, and its own INT8 kernels differ")
        return _write(out, source, recipe, job, result, golden, artifact_path)


def _guard(recipe: Recipe, job: QuantizeJob, prepared: Path, build, evaluate, first: FallbackResult, calibration,
           calibration_expected, latency) -> FallbackResult:
    """The default recipe's worst-case guard: hold the recipe's budget on the calibration data
    (never on the evaluation data, which stays unseen), keeping at most a few nodes."""
    def on_calibration(model_file: Path) -> ParityReport:
        return evaluate(model_file, calibration, calibration_expected, recipe.guard)

    check = on_calibration(first.model_file)
    if check.passed:
        return first
    job.say(f"worst case on the calibration data: {check.failures[0]}; keeping the most sensitive nodes...")
    trial = FallbackResult(first.model_file, check, [])
    ranking = recipe.rank(job, prepared, build, on_calibration)
    limit = recipe.guard_max_kept if job.options.max_kept_nodes is None else job.options.max_kept_nodes
    guarded = keep_sensitive_nodes(ranking, build, on_calibration, trial, latency, max_kept=limit, required=False,
                                   progress=job.say)
    figures = ", ".join(f"{k} {v:g}" for k, v in recipe.guard.thresholds().items())
    job.levers.append(f"worst-case guard ({figures} on calibration data): {len(guarded.kept)} node(s) kept in FP32")
    return FallbackResult(guarded.model_file, evaluate(guarded.model_file), guarded.kept, guarded.steps,
                          guarded.latency_ms)


def _latency_probe(source: Artifact, evaluation):
    """A candidate's median latency on one evaluation example, timed in blocks alternating with
    the fully quantized candidate (this machine's noise moves medians by up to 1.6x between
    rounds, so the cost of a kept node is read from one run).  Returns the candidate's
    latency scaled to the first candidate's, measured once."""
    import time

    feeds = {name: value[:1] for name, value in evaluation.batches[0].items()}
    state: dict = {}

    def block(runner) -> list[float]:
        samples = []
        for _ in range(8):
            start = time.perf_counter()
            runner.run(feeds)
            samples.append(time.perf_counter() - start)
        return samples

    def measure_latency(model_file: Path) -> float:
        if "first" not in state:
            state["first"] = OnnxRuntimeRunner(model_file)
            state["first_ms"] = None
        first = state["first"]
        with OnnxRuntimeRunner(model_file) as runner:
            for _ in range(2):
                runner.run(feeds)
                first.run(feeds)
            mine, theirs = [], []
            for _ in range(4):
                mine += block(runner)
                theirs += block(first)
        mine_ms, theirs_ms = (float(sorted(v)[len(v) // 2] * 1000) for v in (mine, theirs))
        state["first_ms"] = state["first_ms"] or theirs_ms
        return mine_ms / theirs_ms * state["first_ms"]

    return measure_latency


def _check_source(source: Artifact, path, options: QuantizeOptions) -> None:
    if source.manifest.graph["format"] != "onnx":
        raise ArtifactError(f"quantize takes an ONNX artifact; '{path}' holds a {source.manifest.graph['format']} graph")
    mode = source.manifest.precision.get("mode", "fp32")
    if mode != "fp32":
        raise InvalidOptionError(f"'{path}' is already {mode}; quantize the FP32 artifact instead")
    weight_only = options.mode in ("int4", "int8-weight-only")
    if weight_only != (source.task == "text-generation"):
        raise InvalidOptionError(f"--mode {options.mode} is for " +
                                 ("causal language models (task text-generation)" if weight_only else
                                  "encoder and vision models; causal LMs take --mode int4 or int8-weight-only"))


def _check_calibration_runs(reference: OnnxRuntimeRunner, calibration) -> None:
    """Mismatched calibration data must fail with its own message, not inside ORT's quantizer."""
    try:
        reference.run(calibration.batches[0])
    except ModelInputError as exc:
        raise CalibrationDataError(f"the calibration data does not fit the model: {exc}") from exc


def candidate_settings(recipe: Recipe, target: Target) -> SessionSettings:
    """How candidates run for their parity checks.  On the target, ONNX Runtime's own INT8
    kernels.  For a Q/DQ graph quantized for another target, the Q/DQ pairs computed in
    float instead (no fusion): exact INT8 arithmetic up to float rounding, which is what the
    target computes, whereas this host's kernels may not be.  Measured: the digits CNN
    quantized for the gpu target (symmetric int8, no reduce_range) reads top-1 92% through
    this AVX2 machine's kernels, whose 16-bit intermediate sums saturate, and 98.7% simulated."""
    if recipe.mode == "int8-static" and target.name != detect_host():
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
            got = runner.run(inputs)
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


def _write(out, source: Artifact, recipe: Recipe, job: QuantizeJob, result: FallbackResult, golden,
           artifact_path) -> Artifact:
    model = graph.load(result.model_file)
    with staged_output(out, job.options.force, (artifact_path,), ARTIFACT) as folder:
        graph.save(model, folder / "model.onnx")
        copy_companions(source, folder)
        manifest = Manifest(task=source.task, processing=source.manifest.processing,
                            graph=dict(source.manifest.graph, opset=graph.opset_of(model),
                                       external_data=(folder / "model.onnx.data").exists()),
                            precision=recipe.precision(job, result, operator_counts(model)),
                            parity=dict(source.manifest.parity))
        manifest.parity["quantize"] = result.report.to_dict()
        if golden:
            manifest.parity["quantize-vs-source"] = golden
        manifest.lineage = list(source.manifest.lineage)
        manifest.add_lineage("quantize", parameters=recipe.lineage_parameters(job),
                             tools=tool_versions("onnx", "onnxruntime"),
                             sources={"input_artifact": str(source.path), "input_manifest": source.manifest_sha256,
                                      "model.onnx": source.manifest.files[source.manifest.graph["file"]]["sha256"]},
                             notes=job.notes)
        finalize_manifest(folder, manifest)
    return Artifact.load(out, check_files=False)   # finalize_manifest hashed these very files
