"""Timing several variants side by side: each warmed up until its latency settles, then
measured in interleaved blocks (the order reversed every round) so the machine's drift
hits them all alike, with the machine's state sampled around every round.

Warm-up ends when the coefficient of variation of the last ``window`` calls falls under
``settle_cv``, or when two consecutive windows agree on the median within
``settle_drift`` (a steady but noisy machine), bounded by ``warmup_max_calls`` and
``warmup_max_seconds``; at least ``warmup`` calls are made.  Blocks last at least
``min_duration`` seconds and ``min_count`` calls.  Callers time; runners never time themselves.

Every call is timed twice: by the wall clock, and by the CPU time this process spent on it
(every thread).  On a quiet machine the two agree; when other processes take the CPUs, a
call's wall time grows with how often it is preempted, and preemption is not proportional:
the scheduler lets a short call that follows a pause finish in one slice and makes a long one
wait for the others.  MiniLM FP32 against INT8 on one thread, five paired rounds: by the wall
clock 3.4-3.9x quiet and 6.3-9.4x beside four CPU burners; by on-CPU time 3.4-3.9x and
3.4-3.8x.  So a disturbed measurement can take its speed-ups from on-CPU time
(``Measurement.speedup``), where on-CPU time stands for latency: one thread doing the work
and none spinning (a spinning pool's idle threads would count as work; with several
threads it adds up their work, not the time the call took).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InvalidOptionError
from ..vocabulary import DEFAULT_MIN_COUNT, DEFAULT_MIN_DURATION_S, DEFAULT_ROUNDS
from .intervals import paired_ratio
from .load import Monitor


@dataclass(frozen=True)
class Settings:
    rounds: int = DEFAULT_ROUNDS
    warmup: int = 3                # calls at least, before the settling test
    min_duration: float = DEFAULT_MIN_DURATION_S      # seconds per block
    min_count: int = DEFAULT_MIN_COUNT                # calls per block
    max_count: int = 10_000
    pause: float = 0.05            # between blocks: let the other variant's threads settle
    window: int = 8                # warm-up: calls per sliding window
    settle_cv: float = 0.05
    settle_drift: float = 0.03
    warmup_max_calls: int = 200
    warmup_max_seconds: float = 10.0

    def __post_init__(self):
        for name in ("rounds", "min_count", "max_count", "window", "warmup_max_calls"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidOptionError(f"--{name.replace('_', '-')} must be a whole number >= 1 (got {value!r})")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise InvalidOptionError(f"warmup must be a whole number >= 0 (got {self.warmup!r})")
        for name in ("min_duration", "pause", "settle_cv", "settle_drift", "warmup_max_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidOptionError(f"--{name.replace('_', '-')} must be a finite number >= 0 (got {value!r})")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a measurement; carries the samples measured so far.  A KeyboardInterrupt
    still, so that a caller that does not report partial figures (quantize's timing) stops as
    Ctrl-C stops anything else."""

    def __init__(self, samples: dict[str, list[float]]):
        super().__init__("interrupted")
        self.samples = samples


def cpu_time_is_latency(threads: int, spinning: bool) -> bool:
    """Whether on-CPU time stands for a call's latency: one thread doing the work and none
    spinning (the module's docstring says why)."""
    return threads == 1 and not spinning


@dataclass
class Measurement:
    """Per variant, the samples (wall seconds, and the process's CPU seconds) of each round;
    per round, the machine's state; per variant, how its warm-up went."""

    rounds: dict[str, list[np.ndarray]]
    cpu_rounds: dict[str, list[np.ndarray]] = field(default_factory=dict)
    machine: list[dict | None] = field(default_factory=list)
    warmup: dict[str, dict] = field(default_factory=dict)

    def samples(self, name: str) -> np.ndarray:
        return np.concatenate(self.rounds[name]) if self.rounds[name] else np.zeros(0)

    def round_medians_ms(self, name: str) -> list[float]:
        return [round(float(np.median(r)) * 1000, 4) for r in self.rounds[name]]

    def disturbed_rounds(self) -> int:
        return sum(1 for state in self.machine if state and state["disturbed"])

    def speedup(self, reference: str, name: str, cpu_time: bool = True) -> dict:
        """How many times faster ``name`` ran than ``reference`` in the same rounds, with its
        95% interval: by the wall clock on a quiet machine, by on-CPU time when any round was
        disturbed (the module's docstring says why; callers pass ``cpu_time=False`` where more
        than one thread works or threads spin), the wall-clock ratio kept beside it."""
        if name == reference:
            return own_speedup(reference)
        value, low, high = paired_ratio(self.rounds[reference], self.rounds[name])
        wall = {"value": value, "ci95": [low, high], "vs": reference, "method": "paired rounds"}
        cpu = [self.cpu_rounds.get(reference), self.cpu_rounds.get(name)]
        usable = all(cpu) and min(float(np.median(r)) for c in cpu for r in c) > 0
        if not (cpu_time and usable and self.disturbed_rounds()):
            return wall
        value, low, high = paired_ratio(*cpu)
        return {"value": value, "ci95": [low, high], "vs": reference,
                "method": "paired rounds, on-CPU time (other processes disturbed the wall clock)",
                "wall": {"value": wall["value"], "ci95": wall["ci95"]}}


OWN_ROW = "itself: the variant the others' speed-ups are against"


def own_speedup(name: str) -> dict:
    """The reference's row against itself: exactly 1, not the ratio of two resamplings."""
    return {"value": 1.0, "ci95": [1.0, 1.0], "vs": name, "method": OWN_ROW}


def _timed(run: Callable, feeds) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    begin, begin_cpu = time.perf_counter(), time.process_time()
    run(feeds)
    return time.perf_counter() - begin, time.process_time() - begin_cpu


def warm_up(run: Callable, feeds_cycle: list, settings: Settings) -> dict:
    """Call ``run`` until its latency settles (see the module's docstring); what happened."""
    times: list[float] = []
    start, cv, settled = time.perf_counter(), None, False
    window = settings.window
    while True:
        times.append(_timed(run, feeds_cycle[len(times) % len(feeds_cycle)])[0])
        if len(times) >= max(settings.warmup, window):
            last = np.asarray(times[-window:])
            cv = float(last.std() / last.mean()) if last.mean() > 0 else 0.0
            previous = np.asarray(times[-2 * window:-window]) if len(times) >= 2 * window else None
            steady = previous is not None and \
                abs(np.median(last) - np.median(previous)) <= settings.settle_drift * np.median(previous)
            if cv <= settings.settle_cv or steady:
                settled = True
                break
        if len(times) >= settings.warmup_max_calls or time.perf_counter() - start >= settings.warmup_max_seconds:
            break
    return {"calls": len(times), "settled": settled, "window_cv": None if cv is None else round(cv, 4),
            "seconds": round(time.perf_counter() - start, 3)}


def _block(run: Callable, feeds_cycle: list, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """One block's calls: (wall seconds, CPU seconds), each an array."""
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()
    while (len(samples) < settings.min_count or time.perf_counter() - start < settings.min_duration) \
            and len(samples) < settings.max_count:
        samples.append(_timed(run, feeds_cycle[len(samples) % len(feeds_cycle)]))
    timed = np.asarray(samples, dtype=np.float64).reshape(-1, 2)
    return timed[:, 0], timed[:, 1]


def interleaved(runners: dict[str, Callable], feeds_cycle: list, settings: Settings, monitor: Monitor | None = None,
                tick: Callable[[str], None] = lambda name: None) -> Measurement:
    """Every variant warmed up, then ``settings.rounds`` rounds of one block each, the order
    reversed every round, the machine sampled around each round.  Ctrl-C raises
    ``Interrupted`` holding what was measured."""
    monitor = monitor or Monitor()
    measurement = Measurement({name: [] for name in runners}, {name: [] for name in runners})
    try:
        for name, run in runners.items():
            measurement.warmup[name] = warm_up(run, feeds_cycle, settings)
        for round_index in range(settings.rounds):
            names = list(runners) if round_index % 2 == 0 else list(reversed(runners))
            before = monitor.sample()
            for name in names:
                wall, cpu = _block(runners[name], feeds_cycle, settings)
                measurement.rounds[name].append(wall)
                measurement.cpu_rounds[name].append(cpu)
                tick(name)
                time.sleep(settings.pause)
            measurement.machine.append(monitor.between(before, monitor.sample()))
    except KeyboardInterrupt:
        raise Interrupted({name: list(measurement.samples(name)) for name in runners}) from None
    return measurement
