"""``edgeport quantize``: INT8 (dynamic, static QDQ) and FP16 artifacts, each ending with a
parity check against the input artifact on real data.

The default INT8 recipe (int8-dynamic) is: ONNX Runtime's transformer fusions where the
graph is BERT-like, activation smoothing calibrated on real data (see smooth.py), then
per-channel dynamic quantization.  With a budget (--min-cosine, --max-abs-error,
--min-top1-agreement) the most sensitive nodes are kept in FP32 until it holds.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..artifact import MANIFEST_NAME, Artifact, Manifest, check_output_path, finalize_manifest, staging_folder, \
    tool_versions
from ..bench.parity import ParityReport, compare_outputs
from ..bench.verify import ParityBudget, measure_parity, reference_run
from ..data import examples_for
from ..runtime.backends import cpu_session
from ..errors import ArtifactError, CalibrationDataError, InvalidOptionError, ParityError, QuantizationError, require
from . import graph
from .sensitivity import FallbackResult, keep_sensitive_nodes
from .targets import get_target

MODES = ("int8-dynamic", "int8-static", "fp16")
# Without a budget the gate still refuses a broken model (e.g. reduce_range on this CPU: 0.68).
DEFAULT_MIN_COSINE = {"int8-dynamic": 0.95, "int8-static": 0.95, "fp16": 0.999}
BERT_LIKE = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
             "electra": "bert", "albert": "bert", "mpnet": "bert"}


@dataclass
class QuantizeOptions:
    mode: str
    target: str | None = None              # None: detect the host
    per_channel: bool | None = None        # None: the target's default
    calib: str | None = None               # calibration data (required for int8-static)
    calibration_method: str = "minmax"
    data: str | None = None                # evaluation data (default: bundled real data)
    min_cosine: float | None = None
    max_abs_error: float | None = None
    min_top1_agreement: float | None = None
    smooth_alpha: float | None = 0.7       # int8-dynamic activation smoothing; None disables
    optimize: bool = True                  # ONNX Runtime transformer fusions first
    fp16_fallback: bool = True
    keep_io_types: bool = True
    force: bool = False


def quantize(artifact_path, out, options: QuantizeOptions, progress=None, calibration_progress=None) -> Artifact:
    say = progress or (lambda message: None)
    if options.mode not in MODES:
        raise InvalidOptionError(f"unknown mode '{options.mode}'; choose one of {', '.join(MODES)}")
    target, detected = get_target(options.target)
    if options.mode == "int8-dynamic" and target.dynamic_format is None:
        raise InvalidOptionError(f"target '{target.name}' needs static QDQ quantization; use --mode int8-static")
    if options.mode == "int8-static" and not options.calib:
        raise InvalidOptionError("--mode int8-static needs calibration data: --calib FILE (text, jsonl, npz or an image folder)")
    if options.smooth_alpha is not None and not 0 < options.smooth_alpha < 1:
        raise InvalidOptionError("--smooth-alpha must be between 0 and 1")
    check_output_path(out, options.force)
    require("onnx", "quantize")
    source = Artifact.load(artifact_path)
    if source.manifest.graph["format"] != "onnx":
        raise ArtifactError("quantize takes an ONNX artifact")
    if source.manifest.precision.get("mode", "fp32") != "fp32":
        raise InvalidOptionError(f"'{artifact_path}' is already {source.manifest.precision['mode']}; "
                                 "quantize the FP32 artifact instead")
    per_channel = target.per_channel if options.per_channel is None else options.per_channel
    budget = ParityBudget(options.min_cosine, options.max_abs_error, options.min_top1_agreement)
    gate = budget if budget.given else ParityBudget(min_cosine=DEFAULT_MIN_COSINE[options.mode])

    calibration = examples_for(source, options.calib, role="calib")
    evaluation = examples_for(source, options.data, role="eval")
    say(f"calibration: {calibration.description}; evaluation: {evaluation.description}")
    reference = cpu_session(source.model_path)       # one session serves both checks
    _check_calibration_runs(reference, calibration)
    expected = reference_run(reference, evaluation)

    with tempfile.TemporaryDirectory(prefix="edgeport-quantize-") as work_dir:
        work = Path(work_dir)
        prepared, notes = _prepare(source, options, calibration, work, say)
        counter = itertools.count()
        details: dict = {}

        def build(exclude: list[str]) -> Path:
            dest = work / f"candidate-{next(counter)}.onnx"
            try:
                if options.mode == "int8-dynamic":
                    from .dynamic import quantize_dynamic_file
                    quantize_dynamic_file(prepared, dest, target, per_channel, exclude)
                elif options.mode == "int8-static":
                    from .static import quantize_static_file
                    quantize_static_file(prepared, dest, target, per_channel, exclude, calibration,
                                         options.calibration_method, calibration_progress)
                else:
                    from .fp16 import convert_fp16
                    fp16_model, kept = convert_fp16(graph.load(prepared), calibration, options.keep_io_types,
                                                    options.fp16_fallback, exclude)
                    details["fp16_kept"] = kept
                    graph.save(fp16_model, dest)
            except (InvalidOptionError, CalibrationDataError):
                raise
            except Exception as exc:
                raise QuantizationError(f"{options.mode} quantization failed: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
            return dest

        def evaluate(model_file: Path, thresholds: ParityBudget = budget if budget.given else gate) -> ParityReport:
            try:
                return measure_parity(model_file, None, evaluation, source.task, thresholds,
                                      reference_name=f"input artifact '{source.path}'", reference_outputs=expected)
            except ParityError:
                raise
            except Exception as exc:
                raise QuantizationError(f"the {options.mode} model does not run in ONNX Runtime: "
                                        f"{str(exc).splitlines()[0]}") from exc

        say(f"quantizing ({options.mode}, target {target.name}{' (detected)' if detected else ''})...")
        first_file = build([])
        first = FallbackResult(first_file, evaluate(first_file), [])
        result = first
        if budget.given:
            candidates = _candidates(prepared, options.mode)
            result = keep_sensitive_nodes(candidates, build, evaluate, first, say)
        result.report.raise_for_failure(f"the {options.mode} model")
        if options.mode == "fp16":
            # Rebuild the winner once more so the kept-node list matches the written model.
            result = FallbackResult(build(result.kept), result.report, result.kept, result.ranking)
            _check_fp16_finite(result.model_file, source.model_path, evaluation)
        golden = _golden_parity(source, result.model_file)
        return _write(out, source, options, target, detected, per_channel, result, calibration, golden,
                      notes, details)


def _check_fp16_finite(model_file: Path, fp32_file: Path, evaluation) -> None:
    """ONNX Runtime's CPU graph optimizations run some FP16 nodes in FP32, hiding overflows
    that a GPU would hit; check the graph as written, node by node."""
    from .fp16 import first_nonfinite_node

    culprit = first_nonfinite_node(graph.load(model_file), evaluation, graph.load(fp32_file))
    if culprit:
        raise ParityError(f"the fp16 model produces NaN or infinite values from node '{culprit}' on "
                          f"{evaluation.description} (seen with graph optimizations off, as a GPU runs it); "
                          "drop --no-fp16-fallback to keep overflowing nodes in FP32")


def _check_calibration_runs(session, calibration) -> None:
    """Mismatched calibration data must fail with its own message, not inside ORT's quantizer."""
    try:
        session.run(None, calibration.batches[0])
    except Exception as exc:
        raise CalibrationDataError(f"the calibration data does not fit the model: {str(exc).splitlines()[0]}") from exc


def _prepare(source: Artifact, options: QuantizeOptions, calibration, work: Path, say) -> tuple[Path, list[str]]:
    """Fusions, then smoothing; returns the FP32 graph every candidate starts from."""
    import onnx

    notes = []
    model = graph.load(source.model_path)
    model_type = next((e["parameters"].get("model_type") for e in reversed(source.manifest.lineage)
                       if e["stage"] == "export"), None)
    # Fusions only before dynamic quantization: the static QDQ quantizer loses type
    # information on fused contrib ops and then cannot calibrate their neighbours.
    if options.optimize and options.mode == "int8-dynamic" and model_type in BERT_LIKE:
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            heads, hidden = _attention_shape(source)
            optimized = optimize_model(str(source.model_path), model_type=BERT_LIKE[model_type], num_heads=heads,
                                       hidden_size=hidden, opt_level=1)
            fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
            model = optimized.model
            notes.append(f"ONNX Runtime transformer fusions: {fused}")
        except Exception as exc:  # fusions are an optimisation; never a reason to fail
            notes.append(f"transformer fusions skipped: {type(exc).__name__}: {exc}")
    graph.ensure_node_names(model)
    if options.mode == "int8-static":
        copies = graph.unshare_initializers(model)
        if copies:
            notes.append(f"{copies} shared initializers copied for static quantization")
    smoothing = None
    if options.mode == "int8-dynamic" and options.smooth_alpha is not None:
        from .smooth import smooth_activations

        say(f"smoothing activations (alpha {options.smooth_alpha}) on {calibration.description}...")
        smoothing = smooth_activations(model, calibration.batches, options.smooth_alpha)
        notes.append(f"activation smoothing: {smoothing}")
    prepared = work / "prepared.onnx"
    graph.save(model, prepared)
    onnx.checker.check_model(str(prepared))
    return prepared, notes


def _attention_shape(source: Artifact) -> tuple[int, int]:
    """Heads and hidden size from the config export copied: the optimizer cannot always
    infer them, and without them it does not fuse attention (measured on MiniLM)."""
    import json

    config_file = source.file("config.json")
    if config_file is None:
        return 0, 0
    config = json.loads(config_file.read_text(encoding="utf-8"))
    heads = config.get("num_attention_heads") or config.get("n_heads") or 0
    hidden = config.get("hidden_size") or config.get("dim") or 0
    return int(heads), int(hidden)


def _candidates(prepared: Path, mode: str) -> list[str]:
    model = graph.load(prepared)
    if mode == "fp16":
        ops = ("MatMul", "Gemm", "Conv", "Add", "Mul", "Softmax", "LayerNormalization", "SkipLayerNormalization")
        return [n.name for n in model.graph.node if n.op_type in ops]
    # Every node the quantizer would touch, fused ones (Attention, EmbedLayerNormalization) included.
    return [n.name for n in graph.weight_nodes(model, graph.WEIGHT_OPS)]


def _golden_parity(source: Artifact, model_file: Path) -> dict | None:
    """The candidate against the PyTorch outputs recorded at export (no torch needed)."""
    golden = source.golden()
    if golden is None:
        return None
    inputs, outputs = golden
    session = cpu_session(model_file)
    names = list(outputs)
    got = dict(zip(names, session.run(names, inputs)))
    return compare_outputs(outputs, got, task=source.task, token_mask=inputs.get("attention_mask"),
                           data="golden inputs (export)", reference_name="PyTorch (golden.npz)").to_dict()


def _write(out, source: Artifact, options: QuantizeOptions, target, detected, per_channel, result: FallbackResult,
           calibration, golden, notes, details) -> Artifact:
    model = graph.load(result.model_file)
    op_counts: dict[str, int] = {}
    for node in model.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    with staging_folder(out, options.force) as folder:
        graph.save(model, folder / "model.onnx")
        for name in source.manifest.files:
            if not name.startswith("model.onnx") and name != MANIFEST_NAME:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.path / name, folder / name)
        manifest = Manifest(task=source.task, processing=source.manifest.processing,
                            graph=dict(source.manifest.graph, opset=_opset(model), external_data=(folder / "model.onnx.data").exists()),
                            precision=_precision(options, target, detected, per_channel, result, calibration, details,
                                                 op_counts),
                            parity=dict(source.manifest.parity))
        manifest.parity["quantize"] = result.report.to_dict()
        if golden:
            manifest.parity["quantize-vs-pytorch"] = golden
        manifest.lineage = list(source.manifest.lineage)
        manifest.add_lineage(
            "quantize",
            parameters={"mode": options.mode, "target": target.name, "per_channel": per_channel,
                        "calibration_method": options.calibration_method if options.mode == "int8-static" else None,
                        "smooth_alpha": options.smooth_alpha if options.mode == "int8-dynamic" else None,
                        "optimize": options.optimize, "min_cosine": options.min_cosine,
                        "max_abs_error": options.max_abs_error, "min_top1_agreement": options.min_top1_agreement},
            tools=tool_versions("onnx", "onnxruntime"),
            sources={"input_artifact": str(source.path), "model.onnx": source.manifest.files["model.onnx"]["sha256"]},
            notes=notes,
        )
        finalize_manifest(folder, manifest)
    return Artifact.load(out, verify=False)   # finalize_manifest hashed these very files


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _precision(options, target, detected, per_channel, result, calibration, details, op_counts) -> dict:
    precision = {
        "mode": options.mode,
        "target": target.name,
        "target_detected": detected,
        "kept_fp32_nodes": sorted(set(result.kept) | set(details.get("fp16_kept", []))),
        "calibration": calibration.to_dict() if (options.mode != "int8-dynamic" or options.smooth_alpha) else None,
        "operators": op_counts,
    }
    if options.mode.startswith("int8"):
        precision.update(
            format=target.dynamic_format if options.mode == "int8-dynamic" else target.static_format,
            per_channel=per_channel, reduce_range=target.reduce_range, weight_type=target.weight_type,
            activation_type="dynamic uint8" if options.mode == "int8-dynamic" else target.activation_type,
        )
        if options.mode == "int8-static":
            precision["calibration"]["method"] = options.calibration_method
        if options.mode == "int8-dynamic" and options.smooth_alpha:
            precision["smoothing_alpha"] = options.smooth_alpha
    else:
        precision["keep_io_types"] = options.keep_io_types
        precision["fp16_fallback"] = options.fp16_fallback
    if result.ranking:
        precision["sensitivity"] = [{"node": n, "score_when_kept": round(s, 6)} for n, s in result.ranking[:20]]
    return precision
