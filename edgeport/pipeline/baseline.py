"""The PyTorch source model as a bench variant: the export stage's runner (or, for causal LMs,
its generator) handed to the bench stage, which never imports export itself."""

from __future__ import annotations

import time


def torch_baseline(reference: str, device: str = "cpu"):
    from ..artifact import Artifact
    from ..bench.runner import Variant
    from ..export.baseline import TorchGenerator, TorchRunner

    artifact = Artifact.load(reference)
    start = time.perf_counter()
    runner = (TorchGenerator if artifact.task == "text-generation" else TorchRunner)(artifact, device)
    created = (time.perf_counter() - start) * 1000
    name = f"torch (eager FP32, {device})"
    return Variant(name, runner, {"name": name, "path": runner.source, "kind": "torch", "precision": "fp32",
                                  "size_bytes": None, "provider": runner.device,
                                  "session_create_ms": round(created, 1)})
