"""What machine a benchmark ran on: CPU model and flags, cores, library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ..manifest import tool_versions

INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma",
                     "f16c", "asimd", "asimddp", "sve")


def machine_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "Features"):
                flags.update(value.split())
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    return {
        "cpu": model,
        "cpu_flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "providers": providers,
        "versions": tool_versions("onnxruntime", "numpy", "tokenizers", "torch"),
    }
