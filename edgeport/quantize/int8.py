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
# quantized.  The rest is left to ONNX Runtime's session, which fuses GELU itself: its
# SkipLayerNormalization is the slow kernel the residual sums avoid (outliers.py), the
# feed-forward outlier split needs the bias Add and activation unfused, and fused embeddings
# measured no faster.  (The optimizer still applies its basic rewrites: LayerNorm, Reshape.)
ATTENTION_ONLY = {"enable_skip_layer_norm": False, "enable_bias_skip_layer_norm": False,
                  "enable_embed_layer_norm": False, "enable_gelu": False, "enable_bias_gelu": False}


def transformer_fusions(job: EncoderJob, attention_only: bool = False) -> tuple[Any, str]:
    """ONNX Runtime's fused graph for BERT-like models: every fusion it knows
    (``--optimize``), or with ``attention_only`` just the attention.  Returns the graph (None
    when there is nothing to fuse) and what happened.  Fusions are an optimisation, never a
    reason to fail."""
    model_type = job.source.manifest.export_parameters().get("model_type")
    if model_type not in BERT_LIKE:
        return None, f"model_type '{model_type}' is not one ONNX Runtime fuses ({', '.join(sorted(BERT_LIKE))})"
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = _attention_shape(job)
    options = FusionOptions(BERT_LIKE[model_type])
    # The mask as given, not the optimizer's default of one length per row, which reads a
    # left-padded mask or one with holes wrongly (measured on MiniLM: cosine 0.14 and 0.92).
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    for name, value in (ATTENTION_ONLY if attention_only else {}).items():
        setattr(options, name, value)
    try:
        optimized = optimize_model(str(job.source.model_path), model_type=BERT_LIKE[model_type], num_heads=heads,
                                   hidden_size=hidden, opt_level=1, optimization_options=options)
    except graph.tool_failures() as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        reason = f"ONNX Runtime's transformer optimizer failed: {type(exc).__name__}: {first_line}"
        job.notes.append(reason)
        return None, reason
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if attention_only:
        found = fused.get("Attention")
        return (optimized.model, f"{found} attention block(s) fused") if found else \
            (None, f"ONNX Runtime's transformer optimizer found no attention to fuse in this {model_type} graph")
    job.notes.append(f"ONNX Runtime transformer fusions: {fused}")
    job.levers.append("transformer fusions")
    return optimized.model, f"fused: {fused}"


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


def smooth(job: EncoderJob, model, alpha: float | None, peaks: dict | None = None) -> None:
    """``peaks``: activation statistics shared between graphs of the same export (smooth.py)."""
    if alpha is None or job.calibration is None:
        return
    from .smooth import smooth_activations

    source = "the statistics already measured" if peaks else job.calibration.description
    job.say(f"smoothing activations (alpha {alpha}) on {source}...")
    result = smooth_activations(model, job.calibration.batches, alpha, peaks)
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

    def fallback_limit(self, candidates: int, max_kept: int | None) -> int | None:
        # The candidates are every quantized node: keeping all of them would leave nothing in INT8,
        # an FP32 model labelled int8.
        return min(candidates - 1, max_kept if max_kept is not None else candidates)


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
