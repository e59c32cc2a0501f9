"""What machine a measurement ran on: the CPU model, the instruction sets that decide INT8
speed (AVX2, AVX-512, VNNI, AMX; on ARM dotprod and i8mm), the cores this process may use
(CPU affinity and the cgroup quota honoured), and the library versions."""

from __future__ import annotations

import math
import os
import platform
from functools import lru_cache
from pathlib import Path

# /proc/cpuinfo flag -> the name people use, for the ones that matter to INT8 and FP16 kernels.
INSTRUCTION_SETS = {
    "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "avx512f": "AVX-512", "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16", "avx512_fp16": "AVX-512 FP16",
    "avx_vnni_int8": "AVX-VNNI-INT8", "amx_tile": "AMX", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16",
    "asimd": "NEON", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "SVE", "sve2": "SVE2", "bf16": "BF16",
}


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return model, frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and value.strip():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model, frozenset(flags)


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[1]


def instruction_sets() -> list[str]:
    """The INT8-relevant instruction sets this CPU has, by their usual names."""
    flags = cpu_flags()
    return [name for flag, name in INSTRUCTION_SETS.items() if flag in flags]


def available_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cgroup_cpu_limit() -> float | None:
    """The cgroup's CPU quota in CPUs (cgroup v2 cpu.max, or v1 cfs quota/period), or None."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def physical_cores(cpus: list[int] | None = None) -> int:
    """Distinct physical cores among ``cpus`` (hyperthread siblings count once)."""
    cpus = available_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(cpu)))
    return max(1, len(cores))


def default_threads() -> int:
    """The thread count every variant gets unless --threads says otherwise: the physical cores
    this process may use, no more than its cgroup quota allows."""
    threads = physical_cores()
    limit = cgroup_cpu_limit()
    if limit is not None:
        threads = min(threads, max(1, math.floor(limit)))
    return threads


def machine_info() -> dict:
    from ..manifest import tool_versions
    from .wakeup import wakeup_record

    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    cpus = available_cpus()
    return {
        "cpu": cpu_model(),
        "instruction_sets": instruction_sets(),
        "cpu_flags": sorted(f for f in INSTRUCTION_SETS if f in cpu_flags()),
        "cores": os.cpu_count(),
        "available_cpus": len(cpus),
        "physical_cores": physical_cores(cpus),
        "cgroup_cpu_limit": cgroup_cpu_limit(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "providers": providers,
        "thread_wakeup": wakeup_record(),
        "versions": tool_versions("onnxruntime", "numpy", "tokenizers", "torch", "onnxruntime-genai"),
    }


def describe(info: dict) -> str:
    """One line: the CPU, its INT8 instruction sets, its cores."""
    sets = ", ".join(info.get("instruction_sets") or info.get("cpu_flags") or []) or "no SIMD flags read"
    return (f"{info.get('cpu')} ({sets}); {info.get('available_cpus', info.get('cores'))} CPUs available, "
            f"{info.get('physical_cores', '?')} physical cores")
