"""How sure a speed-up is: the ratio of two variants' latencies measured in the same
interleaved rounds, with a 95% interval from a two-level bootstrap (the rounds resampled,
then the calls within each round), so both the drift between rounds and the scatter within
them widen it.  The point value is the median over rounds of the per-round ratio of medians:
a round disturbed by another process moves one of its ratios, not the estimate.
"""

from __future__ import annotations

import numpy as np

ITERATIONS = 2000


def _bootstrap_medians(samples: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    picks = rng.integers(0, len(samples), size=(iterations, len(samples)))
    return np.median(samples[picks], axis=1)


def paired_ratio(reference: list[np.ndarray], candidate: list[np.ndarray], iterations: int = ITERATIONS,
                 seed: int = 0) -> tuple[float, float, float]:
    """(speed-up, low, high): how many times faster ``candidate`` is than ``reference``
    (reference latency / candidate latency), from the same rounds, with its 95% interval."""
    rounds = min(len(reference), len(candidate))
    if rounds == 0:
        raise ValueError("no rounds to compare")
    reference, candidate = [np.asarray(r, float) for r in reference[:rounds]], [np.asarray(c, float)
                                                                                  for c in candidate[:rounds]]
    point = float(np.median([np.median(r) / np.median(c) for r, c in zip(reference, candidate)]))
    rng = np.random.default_rng(seed)
    ratios = np.stack([_bootstrap_medians(r, iterations, rng) / _bootstrap_medians(c, iterations, rng)
                       for r, c in zip(reference, candidate)])                      # [rounds, iterations]
    chosen = rng.integers(0, rounds, size=(iterations, rounds))                      # rounds resampled
    statistic = np.median(ratios[chosen, np.arange(iterations)[:, None]], axis=1)
    low, high = np.percentile(statistic, [2.5, 97.5])
    return point, float(min(low, point)), float(max(high, point))


def spread(round_medians: list[float]) -> float | None:
    """How far one variant's per-round medians spread: (max - min) / median (0 = steady)."""
    values = np.asarray(round_medians, float)
    if len(values) < 2 or np.median(values) <= 0:
        return None
    return float((values.max() - values.min()) / np.median(values))
