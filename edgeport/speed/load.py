"""How busy the machine is while we measure: between two samples, the share of the CPUs
this process may use that *other* processes took (from /proc/stat, minus our own CPU time),
the share the hypervisor stole, the load average against the cores, and the clock.

A round is disturbed when others took more than ``DISTURBED_SHARE`` of the CPUs or the
hypervisor stole more than ``DISTURBED_STEAL``; a run is too busy to mean anything (bench
--strict refuses to report it) past ``TOO_BUSY_SHARE`` on average.  Where /proc is not
there (not Linux) nothing is measured and nothing is claimed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .host import available_cpus

DISTURBED_SHARE = 0.10
DISTURBED_STEAL = 0.05
TOO_BUSY_SHARE = 0.25
TOO_BUSY_STEAL = 0.10


@dataclass(frozen=True)
class Sample:
    time: float
    busy: float            # seconds of CPU time spent on the available CPUs by everyone (steal excluded)
    steal: float           # seconds stolen from them by the hypervisor
    own: float             # this process's CPU time, every thread
    load_average: float | None
    mhz: float | None


def _ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def _cpu_times(cpus: list[int]) -> tuple[float, float] | None:
    """(busy, steal) seconds summed over ``cpus`` from /proc/stat, or None off Linux."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = steal = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, stolen = (int(v) for v in fields[1:9])
            busy += user + nice + system + irq + softirq
            steal += stolen
    tick = _ticks()
    return busy / tick, steal / tick


def _mhz() -> float | None:
    try:
        values = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz")]
    except (OSError, ValueError, IndexError):
        return None
    return sum(values) / len(values) if values else None


class Monitor:
    """Takes samples of the machine's state; ``between`` says what happened from one to the next."""

    def __init__(self):
        self.cpus = available_cpus()
        self.available = _cpu_times(self.cpus) is not None

    def sample(self) -> Sample | None:
        times = _cpu_times(self.cpus)
        if times is None:
            return None
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):
            load = None
        return Sample(time.perf_counter(), times[0], times[1], time.process_time(), load, _mhz())

    def between(self, start: Sample | None, end: Sample | None) -> dict | None:
        if start is None or end is None or end.time <= start.time:
            return None
        capacity = (end.time - start.time) * len(self.cpus)
        others = max(0.0, (end.busy - start.busy) - (end.own - start.own))
        state = {"seconds": round(end.time - start.time, 3),
                 "other_cpu_share": round(min(1.0, others / capacity), 4),
                 "steal_share": round(min(1.0, (end.steal - start.steal) / capacity), 4),
                 "load_per_cpu": round(end.load_average / len(self.cpus), 3) if end.load_average is not None else None,
                 "mhz": round(end.mhz, 1) if end.mhz else None}
        state["disturbed"] = state["other_cpu_share"] > DISTURBED_SHARE or state["steal_share"] > DISTURBED_STEAL
        return state


def summarize(states: list[dict]) -> dict:
    """The run's machine state: averages over its rounds, how many were disturbed, whether it
    was too busy for its figures to mean anything."""
    states = [s for s in states if s]
    if not states:
        return {"measured": False}
    seconds = sum(s["seconds"] for s in states) or 1.0

    def weighted(key: str) -> float:
        return sum(s[key] * s["seconds"] for s in states) / seconds

    other, steal = weighted("other_cpu_share"), weighted("steal_share")
    loads = [s["load_per_cpu"] for s in states if s["load_per_cpu"] is not None]
    clocks = [s["mhz"] for s in states if s["mhz"]]
    return {"measured": True, "rounds": len(states), "disturbed_rounds": sum(s["disturbed"] for s in states),
            "other_cpu_share": round(other, 4), "steal_share": round(steal, 4),
            "max_other_cpu_share": max(s["other_cpu_share"] for s in states),
            "load_per_cpu": round(max(loads), 3) if loads else None,
            "mhz": [round(min(clocks), 1), round(max(clocks), 1)] if clocks else None,
            "too_busy": other > TOO_BUSY_SHARE or steal > TOO_BUSY_STEAL}
