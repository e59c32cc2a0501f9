"""``edgeport package``: an artifact as an edge bundle (one reproducible archive), a Triton
Inference Server model repository, or a folder of KServe manifests with both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidOptionError
from ..vocabulary import PACKAGE_FORMATS
from .bundle import package_bundle
from .kserve import KServeOptions, package_kserve
from .triton import TritonOptions, package_triton


@dataclass(frozen=True)
class PackageOptions:
    format: str = "bundle"
    target: str = "portable"            # bundle: portable | ort-mobile
    triton: TritonOptions = TritonOptions()
    kserve: KServeOptions = KServeOptions()
    force: bool = False
    sign: str | None = None             # bundle: a PEM private key (model-signing, key-based)


def package(artifact, out, options: PackageOptions = PackageOptions()) -> Path:
    if options.format not in PACKAGE_FORMATS:
        raise InvalidOptionError(f"--format must be one of {', '.join(PACKAGE_FORMATS)} (got '{options.format}')")
    if options.format == "bundle":
        return package_bundle(artifact, out, options.target, options.force, options.sign)
    if options.sign:
        raise InvalidOptionError("--sign signs bundles; a Triton repository or KServe folder is read as it is")
    if options.format == "kserve":
        return package_kserve(artifact, out, options.kserve, options.force)
    return package_triton(artifact, out, options.triton, options.force)


__all__ = ["KServeOptions", "PackageOptions", "TritonOptions", "package"]
