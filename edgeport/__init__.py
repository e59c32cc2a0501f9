"""edgeport: trained model in, deployable artifact out, proven fast and proven faithful.

The public Python API mirrors the command line.  Names are imported lazily so that
``import edgeport`` (and ``edgeport --help``) stays light.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {
    "Artifact": ".artifact",
    "Manifest": ".manifest",
    "EdgeportError": ".errors",
    "export_onnx": ".export.onnx",
    "ExportOptions": ".export.onnx",
    "merge": ".export.lora",
    "MergeOptions": ".export.lora",
    "inspect_artifact": ".inspection",
    "load": ".runtime",
    "quantize": ".quantize",
    "QuantizeOptions": ".quantize",
    "verify": ".parity",
    "ParityBudget": ".parity",
    "ParityReport": ".parity",
    "run_bench": ".bench.runner",
    "BenchOptions": ".bench.runner",
    "package": ".package",
    "PackageOptions": ".package",
    "ship": ".pipeline",
    "Recipe": ".pipeline",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'edgeport' has no attribute {name!r}")


def __dir__():
    return __all__
