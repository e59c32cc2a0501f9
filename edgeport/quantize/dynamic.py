"""int8-dynamic, the default INT8 recipe: ONNX Runtime's transformer fusions where the graph
is BERT-like, activation smoothing calibrated on real data (smooth.py), then per-channel
dynamic quantization through onnxruntime.quantization.quantize_dynamic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError
from ..parity import ParityBudget
from ..vocabulary import DEFAULT_SMOOTH_ALPHA
from . import graph
from .recipes import QuantizeJob, Recipe, register
from .sensitivity import FallbackResult, local_error_ranking

# Measured on all-MiniLM-L6-v2 (AMD EPYC, AVX2): without a guard the default reached min
# cosine 0.982-0.988 on legal, scientific and docstring text it was not calibrated on.  A
# guard of 0.99 (or 0.992) on the calibration sentences kept two feed-forward output MatMuls
# and scientific text still fell to 0.9887: the calibration data's worst case needs a margin
# over the unseen text's.  At 0.995 it keeps three, and all three domains held >= 0.993
# (mean >= 0.997) for about 6% of the INT8 speed at batch 1, sequence 128.
WORST_CASE_GUARD = ParityBudget(min_cosine=0.995)

# model_type -> the model family ONNX Runtime's transformer optimizer fuses.
BERT_LIKE = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
             "electra": "bert", "albert": "bert", "mpnet": "bert"}


def transformer_fusions(job: QuantizeJob):
    """ONNX Runtime's fused graph (Attention, EmbedLayerNormalization, SkipLayerNormalization)
    for BERT-like models, or None.  Fusions are an optimisation, never a reason to fail."""
    model_type = job.source.manifest.export_parameters().get("model_type")
    if not job.options.optimize or model_type not in BERT_LIKE:
        return None
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = _attention_shape(job)
    try:
        optimized = optimize_model(str(job.source.model_path), model_type=BERT_LIKE[model_type], num_heads=heads,
                                   hidden_size=hidden, opt_level=1)
    except (ValueError, KeyError, AssertionError, RuntimeError, IndexError, TypeError) as exc:
        job.notes.append(f"transformer fusions skipped: {type(exc).__name__}: {exc}")
        return None
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    job.notes.append(f"ONNX Runtime transformer fusions: {fused}")
    job.levers.append("transformer fusions")
    return optimized.model


def _attention_shape(job: QuantizeJob) -> tuple[int, int]:
    """Heads and hidden size from the config export copied: the optimizer cannot always
    infer them, and without them it does not fuse attention (measured on MiniLM)."""
    config_file = job.source.file("config.json")
    if config_file is None:
        return 0, 0
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        heads = config.get("num_attention_heads") or config.get("n_heads") or 0
        hidden = config.get("hidden_size") or config.get("dim") or 0
        return int(heads), int(hidden)
    except (ValueError, TypeError, AttributeError):
        return 0, 0


def smoothing_alpha(job: QuantizeJob, mode: str) -> float | None:
    if not job.options.smooth:
        return None
    return job.options.smooth_alpha if job.options.smooth_alpha is not None else DEFAULT_SMOOTH_ALPHA[mode]


def smooth(job: QuantizeJob, model, alpha: float | None) -> None:
    if alpha is None or job.calibration is None:
        return
    from .smooth import smooth_activations

    job.say(f"smoothing activations (alpha {alpha}) on {job.calibration.description}...")
    result = smooth_activations(model, job.calibration.batches, alpha)
    job.notes.append(f"activation smoothing: {result}")
    if result["activations"]:
        job.levers.append(f"activation smoothing (alpha {alpha})")


def save_prepared(job: QuantizeJob, model) -> Path:
    import onnx

    prepared = job.work / "prepared.onnx"
    graph.save(model, prepared)
    onnx.checker.check_model(str(prepared))
    return prepared


def rank_by_local_error(job: QuantizeJob, prepared: Path, candidates: list[str]) -> list[tuple[str, float]]:
    job.say(f"ranking {len(candidates)} nodes by their own quantization error on {job.calibration.description}...")
    return local_error_ranking(graph.load(prepared), candidates, job.calibration.batches, job.target.reduce_range)


class RankedByLocalError:
    """INT8 recipes rank candidates by their own quantization error, in one pass over the
    calibration data, instead of one build and evaluation per node (see sensitivity.py)."""

    def rank(self, job: QuantizeJob, prepared: Path, build, evaluate) -> list[tuple[str, float]]:
        return rank_by_local_error(job, prepared, self.candidates(job, prepared))


@register
class DynamicInt8(RankedByLocalError, Recipe):
    mode = "int8-dynamic"
    guard = WORST_CASE_GUARD

    def check(self, options, target) -> None:
        if target.dynamic_format is None:
            raise InvalidOptionError(f"target '{target.name}' needs static QDQ quantization; use --mode int8-static")

    def prepare(self, job: QuantizeJob) -> Path:
        model = transformer_fusions(job) or graph.load(job.source.model_path)
        graph.ensure_node_names(model)
        smooth(job, model, smoothing_alpha(job, self.mode))
        job.levers.append("per-channel weights" if job.per_channel else "per-tensor weights")
        return save_prepared(job, model)

    def build(self, job: QuantizeJob, prepared: Path, dest: Path, exclude: list[str]) -> None:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(prepared), str(dest),
            per_channel=job.per_channel,
            reduce_range=job.target.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            # Fused graphs (SkipLayerNormalization...) lack type info for some weights without
            # this; quantize_dynamic mutates the dict, so it is built fresh every call.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )

    def candidates(self, job: QuantizeJob, prepared: Path) -> list[str]:
        # Every node the quantizer would touch, fused ones (Attention, EmbedLayerNormalization) included.
        return [n.name for n in graph.weight_nodes(graph.load(prepared), graph.WEIGHT_OPS)]

    def precision(self, job: QuantizeJob, result: FallbackResult, operators: dict[str, int]) -> dict[str, Any]:
        alpha = smoothing_alpha(job, self.mode)
        return int8_precision(job, result, operators, job.target.dynamic_format, "dynamic uint8", alpha,
                              job.calibration.to_dict() if alpha else None)

    def lineage_parameters(self, job: QuantizeJob) -> dict[str, Any]:
        return {**super().lineage_parameters(job), "smooth_alpha": smoothing_alpha(job, self.mode)}


def int8_precision(job: QuantizeJob, result: FallbackResult, operators: dict[str, int], quant_format: str,
                   activation_type: str, alpha: float | None, calibration: dict | None) -> dict[str, Any]:
    precision = {
        "mode": job.options.mode, "target": job.target.name, "target_detected": job.target_detected,
        "kept_fp32_nodes": sorted(result.kept), "calibration": calibration, "operators": operators,
        "format": quant_format, "per_channel": job.per_channel, "reduce_range": job.target.reduce_range,
        "weight_type": job.target.weight_type, "activation_type": activation_type, "levers": list(job.levers),
    }
    if alpha:
        precision["smoothing_alpha"] = alpha
    if result.steps:
        precision["sensitivity"] = result.ranking_records()
    return precision
