"""What the INT8 recipes share: ONNX Runtime's transformer fusions, activation smoothing
calibrated on real data (smooth.py), the prepared graph, ranking candidate nodes by their
own quantization error, and the manifest's INT8 ``precision`` record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..vocabulary import DEFAULT_SMOOTH_ALPHA
from . import graph
from .encoder import EncoderJob
from .sensitivity import FallbackResult, local_error_ranking

# model_type -> the model family ONNX Runtime's transformer optimizer fuses.
BERT_LIKE = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
             "electra": "bert", "albert": "bert", "mpnet": "bert"}


# Attention alone: QKV projection, scores, softmax and context in one QAttention once
# quantized.  Everything else stays as exported: ONNX Runtime's session fuses GELU itself,
# its SkipLayerNormalization is the slow kernel the residual sums avoid (outliers.py), the
# feed-forward outlier split needs the bias Add and activation unfused, and fused embeddings
# measured no faster.
ATTENTION_ONLY = {"enable_skip_layer_norm": False, "enable_bias_skip_layer_norm": False,
                  "enable_embed_layer_norm": False, "enable_gelu": False, "enable_bias_gelu": False}


def transformer_fusions(job: EncoderJob, attention_only: bool = False):
    """ONNX Runtime's fused graph for BERT-like models, or None: every fusion it knows
    (``--optimize``), or with ``attention_only`` just the attention (None when it fused no
    attention).  Fusions are an optimisation, never a reason to fail."""
    model_type = job.source.manifest.export_parameters().get("model_type")
    if model_type not in BERT_LIKE:
        return None
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = _attention_shape(job)
    options = FusionOptions(BERT_LIKE[model_type])
    for name, value in (ATTENTION_ONLY if attention_only else {}).items():
        setattr(options, name, value)
    try:
        optimized = optimize_model(str(job.source.model_path), model_type=BERT_LIKE[model_type], num_heads=heads,
                                   hidden_size=hidden, opt_level=1, optimization_options=options)
    except (ValueError, KeyError, AssertionError, RuntimeError, IndexError, TypeError) as exc:
        job.notes.append(f"transformer fusions skipped: {type(exc).__name__}: {exc}")
        return None
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if attention_only:
        return optimized.model if fused.get("Attention") else None
    job.notes.append(f"ONNX Runtime transformer fusions: {fused}")
    job.levers.append("transformer fusions")
    return optimized.model


def _attention_shape(job: EncoderJob) -> tuple[int, int]:
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


def smoothing_alpha(job: EncoderJob, mode: str) -> float | None:
    if not job.options.smooth:
        return None
    return job.options.smooth_alpha if job.options.smooth_alpha is not None else DEFAULT_SMOOTH_ALPHA[mode]


def smooth(job: EncoderJob, model, alpha: float | None) -> None:
    if alpha is None or job.calibration is None:
        return
    from .smooth import smooth_activations

    job.say(f"smoothing activations (alpha {alpha}) on {job.calibration.description}...")
    result = smooth_activations(model, job.calibration.batches, alpha)
    job.notes.append(f"activation smoothing: {result}")
    if result["activations"]:
        job.levers.append(f"activation smoothing (alpha {alpha})")


def save_prepared(job: EncoderJob, model, name: str = "prepared.onnx") -> Path:
    import onnx

    prepared = job.work / name
    graph.save(model, prepared)
    onnx.checker.check_model(str(prepared))
    return prepared


def rank_by_local_error(job: EncoderJob, prepared: Path, candidates: list[str]) -> list[tuple[str, float]]:
    job.say(f"ranking {len(candidates)} nodes by their own quantization error on {job.calibration.description}...")
    return local_error_ranking(graph.load(prepared), candidates, job.calibration.batches, job.target.reduce_range)


class RankedByLocalError:
    """INT8 recipes rank candidates by their own quantization error, in one pass over the
    calibration data, instead of one build and evaluation per node (see sensitivity.py)."""

    def rank(self, job: EncoderJob, prepared: Path, build, evaluate) -> list[tuple[str, float]]:
        return rank_by_local_error(job, prepared, self.candidates(job, prepared))


def int8_precision(job: EncoderJob, result: FallbackResult, operators: dict[str, int], quant_format: str,
                   activation_type: str, alpha: float | None, calibration: dict | None) -> dict[str, Any]:
    precision = {
        "mode": job.options.mode, "target": job.target.name, "target_detected": job.target_detected,
        "kept_fp32_nodes": sorted(result.kept), "calibration": calibration, "operators": operators,
        "format": quant_format, "per_channel": job.per_channel, "reduce_range": job.target.reduce_range,
        "weight_type": job.target.weight_type, "activation_type": activation_type, "levers": list(job.levers),
    }
    if alpha:
        precision["smoothing_alpha"] = alpha
    from ..speed import instruction_sets
    from ..speed.host import cpu_model

    precision["host"] = {"cpu": cpu_model(), "instruction_sets": instruction_sets(),
                         "preset": job.target.name, "preset_detected": job.target_detected}
    if result.steps:
        precision["sensitivity"] = result.ranking_records()
    return precision
