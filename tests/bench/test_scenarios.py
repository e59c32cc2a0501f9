"""Interleaved rounds (edgeport.speed): warm-up until stable, the order reversed every round,
interruption, settings that cannot run; paired intervals; the machine's state."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from edgeport.bench.scenarios import Interrupted, Settings
from edgeport.errors import InvalidOptionError
from edgeport.speed import Measurement, Monitor, interleaved, paired_ratio, warm_up


def test_interrupt_keeps_what_was_measured():
    calls = {"n": 0}

    def run(feeds):
        calls["n"] += 1
        if calls["n"] > 40:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        interleaved({"a": run}, [{}], Settings(rounds=50, warmup=1, min_duration=0, min_count=4, pause=0,
                                               warmup_max_calls=5))
    assert len(info.value.samples["a"]) >= 4


def test_variants_alternate_and_every_block_is_counted():
    order = []
    settings = Settings(rounds=4, warmup=0, min_duration=0, min_count=3, pause=0)
    measurement = interleaved({"a": lambda f: None, "b": lambda f: None}, [{}], settings, tick=order.append)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]        # order reversed every round
    assert [len(r) for r in measurement.rounds["a"]] == [3] * 4 and len(measurement.samples("b")) == 12
    assert len(measurement.machine) == 4 and set(measurement.warmup) == {"a", "b"}


def test_warm_up_stops_when_latency_settles_and_is_bounded():
    slow_start = iter([0.02] * 5 + [0.002] * 1000)
    settled = warm_up(lambda f: time.sleep(next(slow_start)), [{}], Settings(window=8, settle_cv=0.2))
    assert settled["settled"] and 13 <= settled["calls"] <= 40          # the five slow calls, then one window
    erratic = iter(np.random.default_rng(0).uniform(0, 0.004, 1000))
    bounded = warm_up(lambda f: time.sleep(next(erratic)), [{}], Settings(window=8, settle_cv=0.01, settle_drift=0.0,
                                                                           warmup_max_calls=30))
    assert not bounded["settled"] and bounded["calls"] == 30


def test_paired_intervals_cover_the_true_ratio_and_widen_with_noise():
    rng = np.random.default_rng(3)
    quiet_ref = [rng.normal(10, 0.2, 100) for _ in range(5)]
    quiet_new = [rng.normal(5, 0.1, 100) for _ in range(5)]
    value, low, high = paired_ratio(quiet_ref, quiet_new)
    assert low <= 2.0 <= high and abs(value - 2.0) < 0.05
    drift = [1.0, 1.5, 0.8, 1.3, 1.1]                                   # the machine's speed, round by round
    noisy_ref = [rng.normal(10, 2, 100) * d for d in drift]
    noisy_new = [rng.normal(5, 1, 100) * d for d in drift]
    noisy = paired_ratio(noisy_ref, noisy_new)
    assert noisy[1] <= 2.0 <= noisy[2] and noisy[2] - noisy[1] > high - low


def test_a_disturbed_measurement_takes_its_speedup_from_on_cpu_time():
    """Wall times stretched unevenly by preemption (the long call 2.5x, the short one 1.1x)
    over CPU times that keep the true 3x: quiet, the wall clock is used; disturbed, CPU time,
    with the wall-clock ratio kept beside it."""
    rng = np.random.default_rng(0)
    cpu = {"fp32": [rng.normal(21e-3, 0.2e-3, 40) for _ in range(5)], "int8": [rng.normal(7e-3, 0.1e-3, 40) for _ in range(5)]}
    wall = {"fp32": [c * 2.5 for c in cpu["fp32"]], "int8": [c * 1.1 for c in cpu["int8"]]}
    quiet = Measurement(wall, cpu, machine=[{"disturbed": False}] * 5)
    assert quiet.speedup("fp32", "int8")["method"] == "paired rounds" and quiet.speedup("fp32", "int8")["value"] > 6
    loaded = Measurement(wall, cpu, machine=[{"disturbed": True}] * 2 + [{"disturbed": False}] * 3)
    speedup = loaded.speedup("fp32", "int8")
    assert "on-CPU time" in speedup["method"] and speedup["ci95"][0] <= 3.0 <= speedup["ci95"][1]
    assert speedup["wall"]["value"] > 6 and speedup["vs"] == "fp32"


def test_the_monitor_sees_another_process_take_the_cpus():
    monitor = Monitor()
    if not monitor.available:
        pytest.skip("no /proc/stat on this system")
    burner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        start = monitor.sample()
        time.sleep(1.0)
        state = monitor.between(start, monitor.sample())
    finally:
        burner.kill()
        burner.wait()
    assert state["other_cpu_share"] >= 0.8 / len(monitor.cpus) * 0.8 and state["disturbed"], state


@pytest.mark.parametrize("field,value", [("rounds", 0), ("min_count", 0), ("min_duration", -1.0),
                                         ("min_duration", float("nan")), ("rounds", "3"), ("window", 0)])
def test_settings_that_cannot_run_are_refused(field, value):
    with pytest.raises(InvalidOptionError, match=field.replace("_", "-")):
        Settings(**{field: value})
