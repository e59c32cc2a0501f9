"""Target presets: which quantization format and settings run well (and correctly) where.

Settings follow ONNX Runtime's quantization guide: x86 without VNNI can saturate in
its u8*s8 multiply-add, so weights use 7 bits there (reduce_range), which costs accuracy
(measured 0.68 cosine on MiniLM); VNNI and ARM64 need no such guard; TensorRT wants
symmetric int8 QDQ for both activations and weights.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InvalidOptionError


@dataclass(frozen=True)
class Target:
    name: str
    dynamic_format: str | None    # None: dynamic quantization does not suit this target
    static_format: str
    reduce_range: bool
    per_channel: bool
    activation_type: str          # for static quantization
    weight_type: str
    symmetric_activations: bool

    def to_dict(self) -> dict:
        return asdict(self)


TARGETS = {
    "x86-avx2": Target("x86-avx2", "QOperator", "QDQ", True, True, "QUInt8", "QInt8", False),
    "x86-avx512-vnni": Target("x86-avx512-vnni", "QOperator", "QDQ", False, True, "QUInt8", "QInt8", False),
    "arm64": Target("arm64", "QOperator", "QDQ", False, True, "QUInt8", "QInt8", False),
    "gpu": Target("gpu", None, "QDQ", False, True, "QInt8", "QInt8", True),
}


def detect_host() -> str:
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = cpuinfo.read_text(errors="ignore")
    return "x86-avx512-vnni" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "x86-avx2"


def get_target(name: str | None) -> tuple[Target, bool]:
    """The preset for ``name`` (or the host's when None) and whether it was detected."""
    if name is None:
        return TARGETS[detect_host()], True
    if name not in TARGETS:
        raise InvalidOptionError(f"unknown target '{name}'; choose one of {', '.join(TARGETS)}")
    return TARGETS[name], False
