"""The scenarios after MLPerf Inference's LoadGen that are not interleaved rounds: the server
scenario (Poisson arrivals) and the search for the highest rate that holds a p99 bound.
Single-stream, offline and sweep are interleaved rounds (``edgeport.speed``), whose
``Settings`` and ``Interrupted`` are re-exported here for the bench's callers.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from ..speed import Interrupted, Settings
from .stats import latency_stats, poisson_arrivals

__all__ = ["Interrupted", "Settings", "find_max_qps", "server_run"]


def server_run(run: Callable, feeds_cycle: list, rate: float, count: int, seed: int = 0) -> tuple[list[float], float]:
    """One worker serving requests that arrive as a Poisson process at ``rate`` per second:
    the latencies, and the rate it served (requests over the time to the last completion,
    below the offered rate when the worker cannot keep up).

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
    elapsed = time.perf_counter() - start
    return latencies, count / elapsed if elapsed > 0 else 0.0


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
        stats = latency_stats(server_run(run, feeds_cycle, rate, count, seed=step)[0])
        held = stats.p99_ms <= p99_bound_ms
        probes.append({"rate_per_s": rate, "p99_ms": stats.p99_ms, "held": held})
        if held:
            best, low = max(best, rate), rate
        elif not step:
            break               # not even a tenth of the capacity holds the bound: 0, after one probe
        else:
            high = rate
    return best, probes


def spinning_policy(spinning: bool) -> str:
    ort = ("on (--spinning): ONNX Runtime's intra- and inter-op threads spin between ops, as outside the bench; "
           "speed-ups stay on the wall clock even when the machine is disturbed (spinning is not work)"
           if spinning else "off: ONNX Runtime intra- and inter-op spinning disabled")
    # The baseline sets PASSIVE unless the environment already chose (pipeline/baseline.py).
    omp = os.environ.get("OMP_WAIT_POLICY", "PASSIVE").upper()
    return ort + f"; PyTorch's OpenMP pool {omp.lower()} (OMP_WAIT_POLICY={omp}) when the bench starts it"
