"""How long a sleeping thread takes to wake on this host, and why: the CPU idle policy.

With spinning off (the bench's default footing), ONNX Runtime's pool threads sleep as soon as
an operator's share of work is done, and every operator split across threads wakes them
again.  On a VM whose idle vCPUs halt at once (Linux's haltpoll cpuidle driver with
``guest_halt_poll_ns`` = 0, as the kernel command line of this project's Firecracker VMs
sets it) a wake is a round trip through the hypervisor: 20-50 us one way measured here,
against 3-12 us with the kernel's default 200 us of halt polling.  Short operators pay it
the most: all-MiniLM INT8 at batch 1, 2 threads, spinning off ran 2.36x ORT FP32 with halt
polling off and 2.53x with it on, side by side (benchmarks/idle_policy.py; 2.66x with
threads spinning either way).  The bench reports the figure beside its results so that a reader
knows when multi-thread speed-ups on one machine are not comparable with another's."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import threading
import time
from pathlib import Path

# A wake slower than this (one way) is an idle CPU that halted or slept deeply, not one that
# polled: 20-50 us measured here with halt polling off, 3-12 us with it on.
SLOW_WAKE_US = 15.0
# The host's own halt polling adapts over a run: fewer trips than this read too low.
ROUND_TRIPS = 1000
WARM_UP_ROUND_TRIPS = 20
# On a busy machine the trips can take far longer: stop here and judge from what was timed.
MAX_SECONDS = 0.5
MIN_TIMED_TRIPS = 50

_measured: dict[frozenset[int], float] = {}     # per CPU set: this process measures it once


def idle_policy(sys_root: Path = Path("/sys")) -> dict:
    """The CPU idle driver and governor, and the guest halt-poll window where the haltpoll
    driver has one (nanoseconds; 0 = idle vCPUs halt at once).  Empty off Linux."""
    policy = {}
    for key, path in (("cpuidle_driver", "devices/system/cpu/cpuidle/current_driver"),
                      ("cpuidle_governor", "devices/system/cpu/cpuidle/current_governor_ro"),
                      ("cpuidle_governor", "devices/system/cpu/cpuidle/current_governor"),
                      ("halt_poll_ns", "module/haltpoll/parameters/guest_halt_poll_ns")):
        if key in policy:
            continue
        try:
            value = (sys_root / path).read_text().strip()
        except OSError:
            continue
        policy[key] = int(value) if key == "halt_poll_ns" and value.isdigit() else value
    return policy


def wake_latency_us(fresh: bool = False) -> float | None:
    """The median time, one way, for a thread blocked on another CPU to be woken and answer
    (half a pipe round trip between two threads pinned to two CPUs; under 0.2 s on a quiet
    machine, at most about ``MAX_SECONDS``).  Measured once per process and CPU set unless
    ``fresh``.  None with fewer than two CPUs available, where threads cannot be pinned, or
    where too few trips finished in time."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < 2:
        return None
    key = frozenset(cpus)
    if fresh or key not in _measured:
        wake = _ping_pong(cpus[0], cpus[1], cpus)
        if wake is None:
            return None
        _measured[key] = wake
    return _measured[key]


def _ping_pong(here: int, there: int, restore: list[int]) -> float | None:
    to_partner, from_partner = os.pipe(), os.pipe()
    count = WARM_UP_ROUND_TRIPS + ROUND_TRIPS

    def partner() -> None:
        try:
            os.sched_setaffinity(0, {there})  # 0 = the calling thread on Linux
            for _ in range(count):
                if not os.read(to_partner[0], 1):
                    return
                os.write(from_partner[1], b"x")
        except OSError:
            pass
        finally:
            os.close(from_partner[1])

    thread = threading.Thread(target=partner, name="edgeport-wake-probe", daemon=True)
    trips = []
    try:
        os.sched_setaffinity(0, {here})
        thread.start()
        deadline = time.perf_counter_ns() + int(MAX_SECONDS * 1e9)
        for _ in range(count):
            start = time.perf_counter_ns()
            os.write(to_partner[1], b"x")
            if not os.read(from_partner[0], 1):
                break
            trips.append(time.perf_counter_ns() - start)
            if start > deadline:
                break
    except OSError:
        return None
    finally:
        os.close(to_partner[1])  # a partner still waiting reads end-of-file and stops
        if thread.ident is None:
            os.close(from_partner[1])
        else:
            thread.join(timeout=5)
        if not thread.is_alive():  # else leave its pipe end open rather than let the number be reused
            os.close(to_partner[0])
        os.close(from_partner[0])
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(restore))
    timed = trips[WARM_UP_ROUND_TRIPS:]
    if len(timed) < MIN_TIMED_TRIPS:
        return None
    return round(statistics.median(timed) / 2 / 1e3, 1)


def wakeup_record() -> dict:
    """What the bench and quantize's speed check record about the host's thread wake-ups."""
    return {"wake_us": wake_latency_us(), **idle_policy(),
            "method": "median of half a pipe round trip between two threads pinned to two CPUs"}


def wake_of(record) -> float | None:
    """The record's wake figure, if it holds one (reports are read back from files)."""
    wake = record.get("wake_us") if isinstance(record, dict) else None
    usable = isinstance(wake, (int, float)) and not isinstance(wake, bool) and math.isfinite(wake)
    return wake if usable else None


def wake_phrase(record) -> str | None:
    """The record's wake figure as the bench's table and HTML page say it (None without one)."""
    wake = wake_of(record)
    return None if wake is None else f"a sleeping thread wakes in {wake:.0f} us here"


def halts_at_once(record: dict | None) -> bool:
    """Whether the record shows Linux's haltpoll idle driver with its polling window at 0."""
    record = record if isinstance(record, dict) else {}
    return record.get("cpuidle_driver") == "haltpoll" and record.get("halt_poll_ns") == 0


def slow_wake_warning(record: dict | None, threads: int, spinning: bool) -> str | None:
    """A reader's warning when multi-thread figures taken with spinning off pay a slow wake
    per operator; None when they do not."""
    wake = wake_of(record)
    if spinning or threads < 2 or wake is None or wake <= SLOW_WAKE_US:
        return None
    why = " (idle CPUs halt at once: the haltpoll idle driver with polling off)" if halts_at_once(record) else ""
    return (f"a sleeping thread takes about {wake:.0f} us to wake on this host{why}; with spinning off every operator "
            f"split across the {threads} threads pays it, so multi-thread latencies here read higher, and speed-ups "
            "of fast (e.g. INT8) models lower, than on a host whose idle CPUs poll; --spinning measures as ONNX "
            "Runtime runs by default")


def wake_footing_differs(old: dict | None, new: dict | None) -> str | None:
    """For ``bench compare``: a note when one report's machine woke threads slowly and the
    other's quickly (None when alike or unknown)."""
    old_wake, new_wake = wake_of(old), wake_of(new)
    if old_wake is None or new_wake is None:
        return None
    if (old_wake > SLOW_WAKE_US) == (new_wake > SLOW_WAKE_US):
        return None
    return (f"a sleeping thread woke in {old_wake:.0f} us on the old report's machine and {new_wake:.0f} us on the "
            "new one's: with spinning off and more than one thread, latencies differ for that reason alone")
