"""ExecuTorch programs (``model.pte``), lowered to XNNPACK for CPUs: PyTorch's on-device
runtime for Android, iOS and embedded Linux.  edgeport runs them through ExecuTorch's
Python runtime (which needs torch) to verify and benchmark them."""

from __future__ import annotations

from typing import Any

from . import GraphFormat, register


def executorch_runner(artifact, settings):
    from ..executorch import ExecuTorchRunner

    return ExecuTorchRunner(artifact.model_path, artifact.manifest, settings.threads)


def delegation_details(artifact) -> dict[str, Any]:
    """How much of the program XNNPACK runs, and the memory planned for its activations."""
    graph = artifact.manifest.graph
    delegation = dict(graph.get("delegation") or {})
    not_delegated = delegation.pop("not_delegated_ops", None)
    details: dict[str, Any] = {"delegation": delegation, "bounds": graph.get("bounds", {})}
    if not_delegated:
        details["portable"] = dict(list(not_delegated.items())[:8])
    return details


EXECUTORCH = register(GraphFormat(
    name="executorch",
    description="ExecuTorch program (.pte, XNNPACK delegate)",
    runner=executorch_runner,
    details=delegation_details,
    devices=("cpu",),
    triton_refusal="Triton has no ExecuTorch backend; serve the ONNX artifact, or run the .pte on the device",
    # Measured: ExecuTorch 1.5.1 has an aarch64 wheel, but its Python runtime imports torch,
    # and PyPI's aarch64 torch 2.13 is the CUDA build: it does not import without NVIDIA's
    # libraries (cuBLAS, cuDNN, NCCL... several GB), which an emulated CPU cannot use.
    emulation_refusal=("ExecuTorch's Python runtime imports torch, and PyPI's aarch64 torch 2.13 wheel is its CUDA "
                       "build, which does not import without several GB of NVIDIA libraries; the .pte itself runs "
                       "under ExecuTorch's C++ runtime on the device, which edgeport does not emulate yet"),
    # What `from executorch.runtime import Runtime` imports (measured with sys.modules): a
    # bundle's guest installs exactly these, without pip's resolver.
    runtime_requirements=("executorch", "torch", "torchao", "flatbuffers", "ruamel.yaml", "tabulate", "tqdm",
                          "typing_extensions", "sympy", "mpmath", "filelock", "networkx", "jinja2", "markupsafe",
                          "optree"),
))
