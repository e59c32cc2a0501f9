"""edgeport: trained model in, deployable artifact out, proven fast and proven faithful.

The public Python API mirrors the command line.  Names are imported lazily so that
``import edgeport`` (and ``edgeport --help``) stays light.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["Artifact", "Manifest", "EdgeportError", "export_onnx", "ExportOptions", "inspect_artifact", "load"]

_LAZY = {
    "Artifact": ".artifact",
    "Manifest": ".artifact",
    "EdgeportError": ".errors",
    "export_onnx": ".export.onnx",
    "ExportOptions": ".export.onnx",
    "inspect_artifact": ".inspection",
    "load": ".runtime",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'edgeport' has no attribute {name!r}")
