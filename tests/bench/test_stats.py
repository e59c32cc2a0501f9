"""bench.stats: latency statistics, the median's interval, the Poisson schedule (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.bench.stats import latency_stats, median_confidence_interval, poisson_arrivals


def test_latency_stats_match_numpy():
    rng = np.random.default_rng(3)
    seconds = rng.gamma(4.0, 0.002, size=501)
    stats = latency_stats(seconds)
    ms = seconds * 1000
    assert stats.count == 501
    assert stats.mean_ms == pytest.approx(ms.mean())
    assert stats.std_ms == pytest.approx(ms.std(ddof=1))
    for name, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
        assert getattr(stats, name) == pytest.approx(np.percentile(ms, q))
    assert stats.min_ms == pytest.approx(ms.min()) and stats.max_ms == pytest.approx(ms.max())
    low, high = stats.median_ci95_ms
    assert low <= stats.p50_ms <= high


def test_median_interval_uses_the_binomial_order_statistics():
    values = np.arange(100, dtype=float)          # n=100: ranks 50 -/+ 9.8 -> 40 .. 59
    assert median_confidence_interval(values) == (40.0, 59.0)
    # Coverage: the interval holds the true median of a known distribution ~95% of the time.
    rng = np.random.default_rng(0)
    hits = sum(lo <= 1.0 <= hi for lo, hi in
               (median_confidence_interval(np.sort(rng.exponential(1 / np.log(2), 200))) for _ in range(400)))
    assert 0.92 <= hits / 400 <= 0.98


def test_poisson_schedule_has_the_rate_and_exponential_spacing():
    rate = 50.0
    arrivals = poisson_arrivals(rate, 20000, seed=1)
    gaps = np.diff(np.concatenate([[0.0], arrivals]))
    assert np.all(gaps > 0)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)          # exponential: CV = 1
    assert (gaps < 1 / rate).mean() == pytest.approx(1 - np.exp(-1), abs=0.02)
    assert len(arrivals) / arrivals[-1] == pytest.approx(rate, rel=0.03)
    np.testing.assert_array_equal(arrivals, poisson_arrivals(rate, 20000, seed=1))   # reproducible
