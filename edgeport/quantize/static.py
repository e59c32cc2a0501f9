"""INT8 static quantization (QDQ) with calibration through onnxruntime.quantization."""

from __future__ import annotations

from pathlib import Path

from ..data import ExampleSet, concat_padded
from ..errors import InvalidOptionError
from .targets import Target

METHODS = ("minmax", "entropy", "percentile")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol, with a progress callback."""

    def __init__(self, examples: ExampleSet, progress=None):
        self.examples = examples
        self.progress = progress
        self.done = 0
        examples.rewind()

    def get_next(self):
        batch = self.examples.get_next()
        if batch is not None:
            self.done += 1
            if self.progress:
                self.progress(self.done, len(self.examples.batches))
        return batch

    def rewind(self):
        self.examples.rewind()
        self.done = 0


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
    batches = [{k: v[i:i + size] for k, v in merged.items()} for i in range(0, total - size + 1, size)]
    return ExampleSet(examples.description, examples.sha256, batches)


def quantize_static_file(source: Path, dest: Path, target: Target, per_channel: bool, exclude: list[str],
                         examples: ExampleSet, method: str, progress=None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise InvalidOptionError(f"--calibration-method must be one of {', '.join(METHODS)} (got '{method}')")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    if method != "minmax":
        examples = uniform_batches(examples)
    quantize_static(
        str(source), str(dest), _Reader(examples, progress),
        quant_format=QuantFormat.QDQ if target.static_format == "QDQ" else QuantFormat.QOperator,
        per_channel=per_channel,
        reduce_range=target.reduce_range,
        activation_type=getattr(QuantType, target.activation_type),
        weight_type=getattr(QuantType, target.weight_type),
        calibrate_method=calibrate,
        nodes_to_exclude=list(exclude),
        extra_options={"ActivationSymmetric": target.symmetric_activations, "WeightSymmetric": True,
                       "CalibMovingAverage": method == "minmax"},
    )
