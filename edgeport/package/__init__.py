"""``edgeport package``: an artifact as an edge bundle (one reproducible archive) or a Triton
Inference Server model repository."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidOptionError
from ..vocabulary import PACKAGE_FORMATS
from .bundle import package_bundle
from .triton import TritonOptions, package_triton


@dataclass(frozen=True)
class PackageOptions:
    format: str = "bundle"
    target: str = "portable"            # bundle: portable | ort-mobile
    triton: TritonOptions = TritonOptions()
    force: bool = False
    sign: str | None = None             # bundle: a PEM private key (model-signing, key-based)


def package(artifact, out, options: PackageOptions = PackageOptions()) -> Path:
    if options.format not in PACKAGE_FORMATS:
        raise InvalidOptionError(f"--format must be one of {', '.join(PACKAGE_FORMATS)} (got '{options.format}')")
    if options.format == "bundle":
        return package_bundle(artifact, out, options.target, options.force, options.sign)
    if options.sign:
        raise InvalidOptionError("--sign signs bundles; a Triton repository is a folder Triton reads as it is")
    return package_triton(artifact, out, options.triton, options.force)


__all__ = ["PackageOptions", "TritonOptions", "package"]
