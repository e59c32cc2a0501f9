"""Latency statistics and the Poisson arrival schedule of the server scenario (numpy only)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class LatencyStats:
    count: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    median_ci95_ms: tuple[float, float]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["median_ci95_ms"] = list(self.median_ci95_ms)
        return data


def median_confidence_interval(sorted_values: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Distribution-free 95% interval of the median from order statistics (binomial, normal
    approximation): ranks n/2 -/+ z*sqrt(n)/2."""
    n = len(sorted_values)
    if n == 0:
        return (math.nan, math.nan)
    half = z * math.sqrt(n) / 2
    low = max(0, int(math.floor(n / 2 - half)))
    high = min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return float(sorted_values[low]), float(sorted_values[max(low, high)])


def latency_stats(seconds) -> LatencyStats:
    values = np.sort(np.asarray(seconds, dtype=np.float64) * 1000.0)
    if values.size == 0:
        raise ValueError("no latency samples")
    return LatencyStats(
        count=int(values.size),
        mean_ms=float(values.mean()),
        std_ms=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        min_ms=float(values[0]),
        p50_ms=float(np.percentile(values, 50)),
        p90_ms=float(np.percentile(values, 90)),
        p99_ms=float(np.percentile(values, 99)),
        max_ms=float(values[-1]),
        median_ci95_ms=median_confidence_interval(values),
    )


def poisson_arrivals(rate_per_s: float, count: int, seed: int = 0) -> np.ndarray:
    """Arrival times (seconds from start) of ``count`` requests at ``rate_per_s`` on average:
    exponential gaps, as MLPerf LoadGen's server scenario."""
    if rate_per_s <= 0:
        raise ValueError("rate must be positive")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=count)
    return np.cumsum(gaps)
