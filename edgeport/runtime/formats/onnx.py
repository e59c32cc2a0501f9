"""ONNX graphs run by ONNX Runtime (on the CPU, CUDA, or ONNX Runtime's TensorRT execution
provider when the artifact was made with ``export tensorrt --via onnxruntime``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ...errors import ArtifactError
from . import GraphFormat, TritonModel, register


def onnx_runner(artifact, settings):
    from ..onnxrt import OnnxRuntimeRunner

    provider_options = None
    if (artifact.manifest.graph.get("engine") or {}).get("via") == "onnxruntime":   # built for the TensorRT EP
        from ..tensorrt import ort_tensorrt_options, provider_cache

        provider_options = {"TensorrtExecutionProvider": ort_tensorrt_options(artifact.manifest,
                                                                              provider_cache(artifact))}
    return OnnxRuntimeRunner(artifact.model_path, settings, artifact.manifest.inputs,
                             [s["name"] for s in artifact.manifest.graph["outputs"]], provider_options)


def operator_histogram(artifact) -> dict[str, Any]:
    """Operator counts (``domain.Op`` for non-default domains), most frequent first; empty
    where the onnx package (the quantize extra) is not installed."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return {}
    try:
        model = onnx.load(str(artifact.model_path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise ArtifactError(f"'{artifact.model_path}' is not a readable ONNX model: {exc}") from exc
    counts = Counter((f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
                     for n in model.graph.node)
    return {"operators": dict(counts.most_common())}


ONNX = register(GraphFormat(
    name="onnx",
    description="ONNX graph (ONNX Runtime)",
    runner=onnx_runner,
    details=operator_histogram,
    triton=TritonModel("onnxruntime_onnx", "model.onnx"),
    mobile_convertible=True,
))
