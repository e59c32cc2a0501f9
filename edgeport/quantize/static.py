"""int8-static: QDQ with calibration through onnxruntime.quantization.quantize_static.

What the quantizer touches decides whether a real transformer survives it (measured on
all-MiniLM-L6-v2; a tiny random BERT shows none of this):

- Only nodes that multiply by a weight (MatMul, Gemm, Conv) are quantized.  Left to its
  defaults, ONNX Runtime also quantizes Add, Mul, Softmax..., including the Add that
  applies the attention mask (float32's minimum, -3.4e38, on padded positions): the
  calibrated range of that tensor is astronomically wide, every real attention score
  rounds to the same value (min cosine 0.16-0.19), and the histogram calibrators fail
  outright ("Too many bins for data range").  Restricting to weight MatMuls: 0.937.
- MatMul and Gemm outputs are not quantized.  The feed-forward output carries BERT's
  residual-stream outliers (a few channels at the [CLS] token are 100x the rest); one
  uint8 scale for all of them cost 0.05 of mean cosine by itself.  Left in float, the
  graph runs as MatMulIntegerToFloat, the same fast kernel dynamic quantization uses.
  With both: mean 0.989-0.990 for minmax, entropy and percentile.
- Embedding lookups (Gather) are quantized too: 61 MB -> 25 MB for -0.001 of mean cosine.
- Light activation smoothing (alpha 0.25) on normalisation outputs adds what is left:
  mean 0.992-0.994.  Stronger smoothing hurts here (0.5: 0.977; 0.7: 0.90), unlike in
  the dynamic recipe, because a static scale is fixed over every calibration batch.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from ..data import ExampleSet, concat_padded
from . import graph
from .encoder import EncoderJob, EncoderRecipe
from .int8 import RankedByLocalError, int8_precision, save_prepared, smooth, smoothing_alpha
from .recipes import register
from .sensitivity import FallbackResult

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv", "Gather")
# In conv nets, activations and pooling that only pass values on are quantized too, so a
# chain Conv -> Relu -> MaxPool -> Conv stays in int8 instead of going back to float and
# being quantized again between every pair: on the Keras CNN the Dequantize/Quantize pairs
# took a third of the INT8 run time (INT8 0.8x FP32 at batch 64; 1.0-1.1x without them).
CONV_PASS_THROUGH_OPS = ("Relu", "Clip", "MaxPool")
FLOAT_OUTPUT_OPS = ("MatMul", "Gemm")
MAX_UNIFORM_BATCH = 256


def uniform_batches(examples: ExampleSet) -> ExampleSet:
    """Batches of one shape: onnxruntime's histogram calibrators (entropy, percentile) stack
    every batch of a tensor into one array and fail on ragged ones.  Text batches are
    padded to the longest (mask 0, so padding is ignored by the model's attention); then
    all examples go in equal batches of at most MAX_UNIFORM_BATCH, dropping a remainder.
    """
    shapes = {tuple((k, v.shape) for k, v in b.items()) for b in examples.batches}
    if len(shapes) == 1:
        return examples
    merged = {name: concat_padded([b[name] for b in examples.batches]) for name in examples.batches[0]}
    total = len(next(iter(merged.values())))
    size = min(total, MAX_UNIFORM_BATCH)
    batches = tuple({k: v[i:i + size] for k, v in merged.items()} for i in range(0, total - size + 1, size))
    return ExampleSet(examples.description, examples.sha256, batches)


@register
class StaticInt8(RankedByLocalError, EncoderRecipe):
    mode = "int8-static"
    needs_calibration_file = True
    # No worst-case guard by default: each candidate recalibrates (12 s on MiniLM), and on the
    # calibration text the guard needed six nodes to reach 0.9907 (mean 0.995 on unseen text).
    # A budget (--min-cosine ...) runs the same search on request.

    def prepare(self, job: EncoderJob) -> Path:
        # Fusions stay off: the QDQ quantizer loses type information on fused contrib ops
        # and then cannot calibrate their neighbours.
        model = graph.load(job.source.model_path)
        if any(node.op_type == "Conv" for node in model.graph.node):
            # Conv nets come with layout Transposes and bias Adds (Keras' export: Conv, then
            # Add) that ONNX Runtime fuses at load time in float, but cannot once Q/DQ pairs sit
            # between them: the Keras CNN ran 1.5x slower in INT8 than FP32 unfused, on par fused.
            model = graph.basic_optimized(job.source.model_path, job.work / "basic.onnx")
            job.levers.append("ONNX Runtime basic rewrites first (Conv bias and BatchNorm fused)")
        graph.ensure_node_names(model)
        copies = graph.unshare_initializers(model)
        if copies:
            job.notes.append(f"{copies} shared initializers copied for static quantization")
        smooth(job, model, smoothing_alpha(job, self.mode))
        conv = " (and Relu/MaxPool between convolutions)" if any(n.op_type == "Conv" for n in model.graph.node) else ""
        job.levers.extend([f"weight nodes only (MatMul, Gemm, Conv){conv}", "MatMul/Gemm outputs left in float",
                           "per-channel weights" if job.per_channel else "per-tensor weights"])
        return save_prepared(job, model)

    def build(self, job: EncoderJob, prepared: Path, dest: Path, exclude: list[str]) -> None:
        method = job.options.calibration_method
        examples = job.calibration if method == "minmax" else uniform_batches(job.calibration)
        model = graph.load(prepared)
        nodes = [n.name for n in graph.weight_nodes(model, QUANTIZED_OPS) if n.name not in set(exclude)]
        op_types = list(QUANTIZED_OPS)
        if any(node.op_type == "Conv" for node in model.graph.node):
            op_types += CONV_PASS_THROUGH_OPS
            nodes += [n.name for n in model.graph.node if n.op_type in CONV_PASS_THROUGH_OPS]
        # its calibrators print() progress ("Collecting tensor data and making histogram ..."), which
        # landed in stdout, the command's --json result; edgeport reports the calibration itself
        with contextlib.redirect_stdout(io.StringIO()):
            self._quantize_static(prepared, dest, examples, job, method, nodes, op_types)
        if job.target.name != "gpu":
            # ONNX Runtime's CPU SkipLayerNormalization is slower than the Add and LayerNorm it
            # replaces (outliers.py); TensorRT fuses the plain Add itself.
            from .outliers import residual_sums

            quantized = graph.load(dest)
            if residual_sums(quantized):
                graph.save(quantized, dest)

    @staticmethod
    def _quantize_static(prepared: Path, dest: Path, examples, job: EncoderJob, method: str, nodes: list[str],
                         op_types: list[str]) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        quantize_static(
            str(prepared), str(dest), examples.reader(job.calibration_progress),
            quant_format=QuantFormat.QDQ if job.target.static_format == "QDQ" else QuantFormat.QOperator,
            op_types_to_quantize=op_types,
            nodes_to_quantize=nodes,
            per_channel=job.per_channel,
            reduce_range=job.target.reduce_range,
            activation_type=getattr(QuantType, job.target.activation_type),
            weight_type=getattr(QuantType, job.target.weight_type),
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"ActivationSymmetric": job.target.symmetric_activations, "WeightSymmetric": True,
                           "CalibMovingAverage": method == "minmax",
                           "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS)},
        )

    def candidates(self, job: EncoderJob, prepared: Path) -> list[str]:
        return [n.name for n in graph.weight_nodes(graph.load(prepared), QUANTIZED_OPS)]

    def precision(self, job: EncoderJob, result: FallbackResult, operators: dict[str, int]) -> dict[str, Any]:
        calibration = dict(job.calibration.to_dict(), method=job.options.calibration_method)
        return int8_precision(job, result, operators, job.target.static_format, job.target.activation_type,
                              smoothing_alpha(job, self.mode), calibration)

    def lineage_parameters(self, job: EncoderJob) -> dict[str, Any]:
        return {**super().lineage_parameters(job), "calibration_method": job.options.calibration_method,
                "smooth_alpha": smoothing_alpha(job, self.mode)}
