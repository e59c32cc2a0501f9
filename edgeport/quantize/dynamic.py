"""INT8 dynamic quantization through onnxruntime.quantization.quantize_dynamic."""

from __future__ import annotations

from pathlib import Path

from .targets import Target


def quantize_dynamic_file(source: Path, dest: Path, target: Target, per_channel: bool,
                          exclude: list[str]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source), str(dest),
        per_channel=per_channel,
        reduce_range=target.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        # Fused graphs (SkipLayerNormalization...) lack type info for some weights without
        # this; quantize_dynamic mutates the dict, so it is built fresh every call.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
