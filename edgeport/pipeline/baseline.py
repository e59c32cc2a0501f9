"""The PyTorch source model as a bench variant: the export stage's runner (or, for causal LMs,
its generator) handed to the bench stage, which never imports export itself."""

from __future__ import annotations

import time


def torch_baseline(reference: str, device: str = "cpu", threads: int | None = None):
    """The PyTorch source model as a bench variant, on ``threads`` intra-op threads (the
    bench's own count, so it runs on equal footing) with its OpenMP pool passive: a spinning
    pool steals the cores of the variants timed after it (set before torch loads OpenMP)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..artifact import Artifact
    from ..bench.runner import Variant
    from ..export.baseline import TorchGenerator, TorchRunner

    artifact = Artifact.load(reference)
    start = time.perf_counter()
    runner = (TorchGenerator if artifact.task == "text-generation" else TorchRunner)(artifact, device, threads)
    created = (time.perf_counter() - start) * 1000
    name = f"torch (eager FP32, {device})"
    return Variant(name, runner, {"name": name, "path": runner.source, "kind": "torch", "precision": "fp32",
                                  "size_bytes": None, "provider": runner.device,
                                  "session_create_ms": round(created, 1)})
