"""edgeport: trained model in, deployable artifact out, proven fast and proven faithful.

The public Python API mirrors the command line.  Names are imported lazily so that
``import edgeport`` (and ``edgeport --help``) stays light.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["Artifact", "Manifest", "EdgeportError", "export_onnx", "ExportOptions", "inspect_artifact", "load",
           "merge", "MergeOptions", "QuantizeOptions", "verify", "ParityBudget"]
# quantize() lives at edgeport.quantize.quantize: the name edgeport.quantize is its subpackage.

_LAZY = {
    "Artifact": ".artifact",
    "Manifest": ".artifact",
    "EdgeportError": ".errors",
    "export_onnx": ".export.onnx",
    "ExportOptions": ".export.onnx",
    "inspect_artifact": ".inspection",
    "load": ".runtime",
    "merge": ".export.lora",
    "MergeOptions": ".export.lora",
    "QuantizeOptions": ".quantize",
    "verify": ".bench.verify",
    "ParityBudget": ".bench.verify",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'edgeport' has no attribute {name!r}")
