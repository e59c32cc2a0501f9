"""How long a sleeping thread takes to wake on this host, and why: the CPU idle policy.

With spinning off (the bench's default footing), ONNX Runtime's pool threads sleep as soon as
an operator's share of work is done, and every operator split across threads wakes them
again.  On a VM whose idle vCPUs halt at once (Linux's haltpoll cpuidle driver with
``guest_halt_poll_ns`` = 0, as the kernel command line of this project's Firecracker VMs
sets it) a wake is a round trip through the hypervisor: 28-37 us one way measured here,
against 4-12 us with the kernel's default 200 us of halt polling.  Short operators pay it
the most: all-MiniLM INT8 at batch 1, 2 threads, spinning off ran 2.29x ORT FP32 with halt
polling off and 2.52-2.58x with it on, side by side (benchmarks/idle_policy.py; 2.66-2.71x
with threads spinning either way).  The bench reports the figure beside its results so that a reader
knows when multi-thread speed-ups on one machine are not comparable with another's."""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from functools import lru_cache
from pathlib import Path

# A wake slower than this (one way) is an idle CPU that halted or slept deeply, not one that
# polled: 20-35 us measured here with halt polling off, 11 us with it on.
SLOW_WAKE_US = 15.0
# The host's own halt polling adapts over a run: fewer trips than this read too low.
ROUND_TRIPS = 1000
WARM_UP_ROUND_TRIPS = 20


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


@lru_cache(maxsize=1)
def wake_latency_us() -> float | None:
    """The median time, one way, for a thread blocked on another CPU to be woken and answer
    (half a pipe round trip between two threads pinned to two CPUs; under 0.1 s).  None
    with fewer than two CPUs available, or where threads cannot be pinned."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < 2:
        return None
    return _ping_pong(cpus[0], cpus[1], cpus)


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
        for _ in range(count):
            start = time.perf_counter_ns()
            os.write(to_partner[1], b"x")
            if not os.read(from_partner[0], 1):
                return None
            trips.append(time.perf_counter_ns() - start)
    except OSError:
        return None
    finally:
        os.close(to_partner[1])  # a partner still waiting reads end-of-file and stops
        if thread.ident is None:
            os.close(from_partner[1])
        else:
            thread.join(timeout=5)
        os.close(to_partner[0])
        os.close(from_partner[0])
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(restore))
    return round(statistics.median(trips[WARM_UP_ROUND_TRIPS:]) / 2 / 1e3, 1)


def wakeup_record() -> dict:
    """What the bench and quantize's speed check record about the host's thread wake-ups."""
    return {"wake_us": wake_latency_us(), **idle_policy(),
            "method": "median of half a pipe round trip between two threads pinned to two CPUs"}


def slow_wake_warning(record: dict | None, threads: int, spinning: bool) -> str | None:
    """A reader's warning when multi-thread figures taken with spinning off pay a slow wake
    per operator; None when they do not."""
    wake = (record or {}).get("wake_us")
    if spinning or threads < 2 or wake is None or wake <= SLOW_WAKE_US:
        return None
    why = (" (halt polling is off: idle CPUs halt at once)" if (record or {}).get("halt_poll_ns") == 0 else "")
    return (f"a sleeping thread takes about {wake:.0f} us to wake on this host{why}; with spinning off every operator "
            f"split across the {threads} threads pays it, so fast (INT8) models' multi-thread speed-ups read lower "
            "here than on a host whose idle CPUs poll; --spinning measures as ONNX Runtime runs by default")
