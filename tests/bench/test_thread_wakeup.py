"""How long a sleeping thread takes to wake (edgeport.speed.wakeup): measured for real between
two threads on two CPUs, read from the CPU idle policy, and turned into a reader's warning
where multi-thread figures with spinning off pay it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading

import pytest

from edgeport.bench.report import BenchReport
from edgeport.speed.wakeup import SLOW_WAKE_US, idle_policy, slow_wake_warning, wake_footing_differs, wake_latency_us

SPIN_OFF = "off: ONNX Runtime intra- and inter-op spinning disabled"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to wake a thread on another")
def test_the_wake_is_measured_and_leaves_the_process_as_it_was():
    affinity = os.sched_getaffinity(0)
    wake = wake_latency_us(fresh=True)
    assert wake is not None and math.isfinite(wake) and 0 < wake < 10_000
    assert os.sched_getaffinity(0) == affinity            # the probe pinned this thread and gave it back
    assert not [t for t in threading.enumerate() if t.name == "edgeport-wake-probe"]   # its partner is gone
    assert wake_latency_us() == wake                      # measured once per process


def test_one_cpu_has_no_other_thread_to_wake():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "from edgeport.speed.wakeup import wake_latency_us; print(wake_latency_us())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "None", result.stderr


def test_the_idle_policy_is_read_from_sysfs(tmp_path):
    (tmp_path / "devices/system/cpu/cpuidle").mkdir(parents=True)
    (tmp_path / "devices/system/cpu/cpuidle/current_driver").write_text("haltpoll\n")
    (tmp_path / "devices/system/cpu/cpuidle/current_governor_ro").write_text("haltpoll\n")
    (tmp_path / "module/haltpoll/parameters").mkdir(parents=True)
    (tmp_path / "module/haltpoll/parameters/guest_halt_poll_ns").write_text("0\n")
    assert idle_policy(tmp_path) == {"cpuidle_driver": "haltpoll", "cpuidle_governor": "haltpoll", "halt_poll_ns": 0}
    assert idle_policy(tmp_path / "nothing") == {}


def test_a_slow_wake_is_a_warning_only_where_it_lowers_the_figures():
    halting = {"wake_us": 3 * SLOW_WAKE_US, "cpuidle_driver": "haltpoll", "halt_poll_ns": 0}
    warning = slow_wake_warning(halting, threads=2, spinning=False)
    assert warning and f"{3 * SLOW_WAKE_US:.0f} us" in warning and "idle CPUs halt at once" in warning
    assert "latencies here read higher" in warning and "--spinning" in warning
    other_driver = slow_wake_warning({**halting, "cpuidle_driver": "intel_idle"}, threads=2, spinning=False)
    assert other_driver and "halt at once" not in other_driver                  # no explanation it cannot back
    assert slow_wake_warning(halting, threads=2, spinning=True) is None       # threads spin: nobody sleeps
    assert slow_wake_warning(halting, threads=1, spinning=False) is None      # one thread: nobody to wake
    assert slow_wake_warning({"wake_us": SLOW_WAKE_US / 3}, threads=2, spinning=False) is None
    assert slow_wake_warning({"wake_us": None}, threads=2, spinning=False) is None
    assert slow_wake_warning(None, threads=2, spinning=False) is None           # an older report


def _report(wake_us: float, threads: int, spinning: str) -> BenchReport:
    machine = {"cpu": "test", "cores": 2, "versions": {},
               "thread_wakeup": {"wake_us": wake_us, "cpuidle_driver": "haltpoll", "halt_poll_ns": 0}}
    return BenchReport(created="now", machine=machine, variants=[], results=[], parity={}, reference="r",
                       settings={"threads": threads, "threads_from": "--threads", "spinning": spinning})


def test_the_bench_report_warns_and_names_the_wake():
    slow = _report(2 * SLOW_WAKE_US, threads=2, spinning=SPIN_OFF)
    slow.judge_machine()
    assert len(slow.warnings) == 1 and "to wake on this host" in slow.warnings[0]
    table = slow.table()
    assert f"a sleeping thread wakes in {2 * SLOW_WAKE_US:.0f} us here" in table and "WARNING: a sleeping" in table
    spinning = _report(2 * SLOW_WAKE_US, threads=2, spinning="on (--spinning): threads spin")
    spinning.judge_machine()
    assert spinning.warnings == []


def test_the_html_report_names_the_wake(tmp_path):
    from edgeport.bench.html import machine_paragraph

    report = _report(7.0, threads=1, spinning=SPIN_OFF)
    assert "a sleeping thread wakes in 7 us here" in machine_paragraph(report)
    report.machine["thread_wakeup"] = {"wake_us": "fast"}                  # a report read back from a file
    assert "wakes in" not in machine_paragraph(report)


def test_compare_notes_machines_that_wake_threads_differently():
    halting, polling = {"wake_us": 36.0, "halt_poll_ns": 0}, {"wake_us": 4.0, "halt_poll_ns": 200000}
    note = wake_footing_differs(halting, polling)
    assert note and "36 us" in note and "4 us" in note
    assert wake_footing_differs(halting, {"wake_us": 30.0}) is None               # both slow: alike
    assert wake_footing_differs(halting, None) is None and wake_footing_differs("x", polling) is None
    assert wake_footing_differs({"wake_us": float("nan")}, polling) is None
