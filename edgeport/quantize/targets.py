"""Target presets: which quantization format and settings run well (and correctly) where,
chosen from the host's instruction sets (edgeport.speed.host) unless ``--target`` names
another machine.

Settings follow ONNX Runtime's quantization guide and what was measured here: x86 without
VNNI can saturate in its u8*s8 multiply-add, so weights use 7 bits there (reduce_range).
On an AMD EPYC (Zen 3, AVX2, no VNNI; benchmarks/int8_formats.py) u8*s8 with full-range
weights was off the exact product by up to 181281 on full-range operands, 7-bit weights
were exact at 0.96-1.07x its speed, u8*u8 exact at 0.78-0.95x, s8*s8 0.14-0.20x; the
default recipe with 7-bit weights held 0.9971 / 0.9937 (worst mean / min cosine) on MiniLM
there (the stock recipe with reduce_range was measured earlier at 0.68).  VNNI, AMX and
ARM64 need no such guard.  Activations are unsigned and weights signed (U8S8) on every
CPU: ONNX Runtime's MLAS has a signed-by-signed kernel only with AVX-VNNI-INT8, and without
it S8S8 ran at 0.25-0.40x the U8S8 speed on the Xeon measured (AMX: u8*s8 GEMMs at 3.5
TOP/s, s8*s8 at 0.04-0.07).  AMX is used by MLAS for u8*s8 on its own; its preset only
records it.  TensorRT wants symmetric int8 QDQ for both activations and weights.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

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
    "x86-amx": Target("x86-amx", "QOperator", "QDQ", False, True, "QUInt8", "QInt8", False),
    "arm64": Target("arm64", "QOperator", "QDQ", False, True, "QUInt8", "QInt8", False),
    "gpu": Target("gpu", None, "QDQ", False, True, "QInt8", "QInt8", True),
}


def detect_host() -> str:
    """The preset of this machine, from its instruction sets."""
    from ..speed import instruction_sets

    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    sets = set(instruction_sets())
    if "AMX-INT8" in sets:
        return "x86-amx"
    return "x86-avx512-vnni" if sets & {"AVX-512 VNNI", "AVX-VNNI"} else "x86-avx2"


def runs_here(target: Target) -> bool:
    """Whether this host runs ``target``'s INT8 as the target would: its own preset, or one
    of the same architecture whose settings are the same (VNNI and AMX differ only in name;
    arm64's settings equal AMX's, but an x86 host's timings are not an ARM core's)."""
    host = TARGETS[detect_host()]
    same_architecture = target.name.startswith("x86") == host.name.startswith("x86")
    return target == host or (same_architecture and {**target.to_dict(), "name": ""} == {**host.to_dict(), "name": ""})


def get_target(name: str | None) -> tuple[Target, bool]:
    """The preset for ``name`` (or the host's when None) and whether it was detected."""
    if name is None:
        return TARGETS[detect_host()], True
    if name not in TARGETS:
        raise InvalidOptionError(f"unknown target '{name}'; choose one of {', '.join(TARGETS)}")
    return TARGETS[name], False
