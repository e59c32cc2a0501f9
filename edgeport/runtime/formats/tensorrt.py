"""Serialized TensorRT engines (``model.plan``), run on the GPU they were built for."""

from __future__ import annotations

from typing import Any

from . import GraphFormat, TritonModel, register


def tensorrt_runner(artifact, settings):
    from ..tensorrt import TensorRTRunner

    return TensorRTRunner(artifact.model_path, artifact.manifest, str(artifact.path))


def engine_details(artifact) -> dict[str, Any]:
    engine = artifact.manifest.graph.get("engine") or {}
    return {"engine": {k: engine.get(k) for k in ("tensorrt", "gpu", "compute_capability", "built_from", "rebuild")
                       if engine.get(k) is not None}}


TENSORRT = register(GraphFormat(
    name="tensorrt",
    description="TensorRT engine (one GPU model and TensorRT version)",
    runner=tensorrt_runner,
    details=engine_details,
    triton=TritonModel("tensorrt_plan", "model.plan"),
    runtime_requirements=("tensorrt", "cuda-python"),
))
