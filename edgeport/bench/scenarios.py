"""The measurement loops, after MLPerf Inference's LoadGen scenarios.

Each function takes ``runners`` (variant name → callable(feeds)) and returns raw samples;
statistics and reports are elsewhere.  Variants are measured in interleaved blocks (the
order reversed every round) so the machine's drift hits them all alike; warm-up calls are
never counted; every block lasts at least ``min_duration`` seconds and ``min_count`` calls.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import InvalidOptionError
from .stats import latency_stats, poisson_arrivals


@dataclass(frozen=True)
class Settings:
    rounds: int = 3
    warmup: int = 3
    min_duration: float = 0.5      # seconds per block
    min_count: int = 10            # calls per block
    max_count: int = 10_000
    pause: float = 0.05            # between blocks: let the other variant's threads settle

    def __post_init__(self):
        for name in ("rounds", "min_count", "max_count"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidOptionError(f"--{name.replace('_', '-')} must be a whole number >= 1 (got {value!r})")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise InvalidOptionError(f"warmup must be a whole number >= 0 (got {self.warmup!r})")
        for name in ("min_duration", "pause"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidOptionError(f"--{name.replace('_', '-')} must be a finite number >= 0 (got {value!r})")


class Interrupted(Exception):
    """Ctrl-C during a measurement; carries the samples measured so far."""

    def __init__(self, samples: dict[str, list[float]]):
        super().__init__("interrupted")
        self.samples = samples


def _block(run: Callable, feeds_cycle: list, settings: Settings) -> list[float]:
    samples = []
    start = time.perf_counter()
    index = 0
    while (len(samples) < settings.min_count or time.perf_counter() - start < settings.min_duration) \
            and len(samples) < settings.max_count:
        feeds = feeds_cycle[index % len(feeds_cycle)]
        index += 1
        begin = time.perf_counter()
        run(feeds)
        samples.append(time.perf_counter() - begin)
    return samples


def interleaved_latency(runners: dict[str, Callable], feeds_cycle: list, settings: Settings,
                        tick: Callable[[str], None] = lambda name: None) -> dict[str, list[float]]:
    """Latency samples (seconds) per variant, measured in alternating blocks.  Ctrl-C raises
    ``Interrupted`` holding what was measured."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    try:
        for run in runners.values():
            for index in range(settings.warmup):
                run(feeds_cycle[index % len(feeds_cycle)])
        for round_index in range(settings.rounds):
            names = list(runners) if round_index % 2 == 0 else list(reversed(runners))
            for name in names:
                samples[name].extend(_block(runners[name], feeds_cycle, settings))
                tick(name)
                time.sleep(settings.pause)
    except KeyboardInterrupt:
        raise Interrupted(samples) from None
    return samples


def server_run(run: Callable, feeds_cycle: list, rate: float, count: int, seed: int = 0) -> list[float]:
    """One worker serving requests that arrive as a Poisson process at ``rate`` per second.

    Latency is completion minus *scheduled* arrival, so time spent queued behind a slow
    request counts, as a user would feel it.
    """
    arrivals = poisson_arrivals(rate, count, seed)
    latencies = []
    start = time.perf_counter()
    for index, arrival in enumerate(arrivals):
        now = time.perf_counter() - start
        if now < arrival:
            time.sleep(arrival - now)
        run(feeds_cycle[index % len(feeds_cycle)])
        latencies.append(time.perf_counter() - start - arrival)
    return latencies


def find_max_qps(run: Callable, feeds_cycle: list, p99_bound_ms: float, single_ms: float, count: int,
                 steps: int = 6) -> tuple[float, list[dict]]:
    """Binary search for the highest Poisson rate whose p99 latency stays under the bound.

    One worker cannot exceed 1 / (service time); the search runs between a tenth of that
    and that.  Returns the best rate that held and every probe.
    """
    high = 1000.0 / max(single_ms, 1e-3)
    low, best, probes = high * 0.1, 0.0, []
    for step in range(steps):
        rate = (low + high) / 2 if step else low
        stats = latency_stats(server_run(run, feeds_cycle, rate, count, seed=step))
        held = stats.p99_ms <= p99_bound_ms
        probes.append({"rate_per_s": rate, "p99_ms": stats.p99_ms, "held": held})
        if held:
            best, low = max(best, rate), rate
        else:
            high = rate
    return best, probes
