"""``edgeport quantize``: the stage that drives a recipe.  Every run ends with a parity check
against the input artifact on real data, and, with a budget, keeps the most sensitive
nodes in higher precision until it holds (sensitivity.py).  Nothing is written unless the
gate passes.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

from ..artifact import Artifact, finalize_manifest
from ..data import examples_for
from ..errors import ArtifactError, CalibrationDataError, InvalidOptionError, ModelInputError, QuantizationError, \
    require
from ..manifest import MANIFEST_NAME, Manifest, tool_versions
from ..outputs import ARTIFACT, check_output, staged_output
from ..parity import ParityBudget, ParityReport, compare_outputs, measure, reference_outputs
from ..runtime.onnxrt import OnnxRuntimeRunner
from . import graph
from .options import QuantizeOptions
from .recipes import QuantizeJob, Recipe, recipe_for
from .sensitivity import FallbackResult, keep_sensitive_nodes
from .targets import get_target


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
    with OnnxRuntimeRunner(source.model_path, inputs=source.manifest.inputs) as reference:   # serves both checks
        _check_calibration_runs(reference, calibration)
        try:
            expected = reference_outputs(reference, evaluation)
        except ModelInputError as exc:
            raise CalibrationDataError(f"the evaluation data does not fit the model: {exc}") from exc
    per_channel = target.per_channel if options.per_channel is None else options.per_channel

    with tempfile.TemporaryDirectory(prefix="edgeport-quantize-") as work_dir:
        job = QuantizeJob(source, options, target, detected, per_channel, calibration, evaluation, Path(work_dir),
                          say, calibration_progress)
        prepared = recipe.prepare(job)
        counter = itertools.count()

        def build(exclude: list[str]) -> Path:
            dest = job.work / f"candidate-{next(counter)}.onnx"
            try:
                recipe.build(job, prepared, dest, exclude)
            except (InvalidOptionError, CalibrationDataError):
                raise
            except (ValueError, RuntimeError, KeyError, IndexError, TypeError, AssertionError) as exc:
                # onnxruntime.quantization's failures on a graph it cannot handle.
                raise QuantizationError(f"{options.mode} quantization failed: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
            return dest

        def evaluate(model_file: Path) -> ParityReport:
            try:
                with OnnxRuntimeRunner(model_file) as candidate:
                    return measure(candidate, expected, evaluation, source.task, gate,
                                   reference_name=f"input artifact '{source.path}'")
            except (ArtifactError, ModelInputError) as exc:
                raise QuantizationError(f"the {options.mode} model does not run in ONNX Runtime: {exc}") from exc

        say(f"quantizing ({options.mode}, target {target.name}{' (detected)' if detected else ''})...")
        first_file = build([])
        result = FallbackResult(first_file, evaluate(first_file), [])
        if budget.given:
            result = keep_sensitive_nodes(recipe.candidates(job, prepared), build, evaluate, result, say)
        result.report.raise_for_failure(f"the {options.mode} model")
        result = recipe.finish(job, result, build)
        golden = _golden_parity(source, result.model_file)
        return _write(out, source, recipe, job, result, golden, artifact_path)


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


def _golden_parity(source: Artifact, model_file: Path) -> dict | None:
    """The candidate against the PyTorch outputs recorded at export (no torch needed)."""
    golden = source.golden()
    if golden is None:
        return None
    inputs, outputs = golden
    with OnnxRuntimeRunner(model_file) as runner:
        try:
            got = runner.run(inputs)
        except ModelInputError as exc:
            raise ArtifactError(f"the golden inputs of '{source.path}' do not fit its model: {exc}") from exc
    return compare_outputs(outputs, got, task=source.task, token_mask=inputs.get("attention_mask"),
                           data="golden inputs (export)", reference_name="PyTorch (golden.npz)").to_dict()


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
            manifest.parity["quantize-vs-pytorch"] = golden
        manifest.lineage = list(source.manifest.lineage)
        manifest.add_lineage("quantize", parameters=recipe.lineage_parameters(job),
                             tools=tool_versions("onnx", "onnxruntime"),
                             sources={"input_artifact": str(source.path), "input_manifest": source.manifest_sha256,
                                      "model.onnx": source.manifest.files[source.manifest.graph["file"]]["sha256"]},
                             notes=job.notes)
        finalize_manifest(folder, manifest)
    return Artifact.load(out, check_files=False)   # finalize_manifest hashed these very files


def copy_companions(source: Artifact, folder: Path) -> None:
    """The source artifact's files other than the graph (tokenizer, golden data, configs)."""
    graph_file = source.manifest.graph["file"]
    for name in source.manifest.files:
        if not name.startswith(graph_file) and name != MANIFEST_NAME:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.member(name), folder / name)
