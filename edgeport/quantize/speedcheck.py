"""Never ship a slower INT8: the quantized graph against its FP32 input on this host, in
interleaved rounds with a paired 95% interval (edgeport.speed), recorded in the manifest's
``precision.speed``.  An INT8 model that is not measurably faster is said so at once, and
``ship`` can refuse it (gate ``min_speedup``, on the interval's lower end)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..runtime.onnxrt import OnnxRuntimeRunner, SessionSettings
from ..speed import (Measurement, Monitor, Settings, cpu_time_is_latency, default_threads, instruction_sets,
                     interleaved, summarize)
from ..speed.host import cpu_model
from ..speed.wakeup import wake_latency_us

# Short: a few seconds per quantize, enough for an interval that separates 1.0 from 1.2
# (MiniLM: 2.6-3.3x measured with it while other processes held half the CPUs).
CHECK = Settings(rounds=5, min_duration=0.12, min_count=6, warmup_max_seconds=1.5)
SPINNING = False


def paired_speedup(measured: Measurement, reference: str, name: str, feeds: dict[str, np.ndarray]) -> dict:
    """How many times faster ``name`` ran than ``reference`` in ``measured`` (taken by
    measure_models on ``feeds``): the figure, its 95% interval and how it was timed."""
    threads = default_threads()
    speedup = measured.speedup(reference, name, cpu_time=cpu_time_is_latency(threads, SPINNING))
    low, high = speedup["ci95"]
    return {"speedup": round(speedup["value"], 4), "ci95": [round(low, 4), round(high, 4)],
            "method": speedup["method"], "rounds": len(measured.rounds[name]), "threads": threads,
            "spinning": SPINNING, "feeds": ", ".join(f"{key} {list(value.shape)}" for key, value in feeds.items())}


def speed_against_fp32(fp32_model: Path, int8_model: Path, feeds: dict[str, np.ndarray]) -> dict:
    """The paired speed-up of ``int8_model`` over ``fp32_model`` on ``feeds`` (one example)."""
    return judge(measure_models({"fp32": fp32_model, "int8": int8_model}, feeds), feeds)


def measure_models(models: dict[str, Path], feeds: dict[str, np.ndarray]) -> Measurement:
    """``models`` (name -> graph file) timed on ``feeds`` in interleaved rounds on this host's
    CPU threads, spinning off."""
    settings = SessionSettings(device="cpu", threads=default_threads(), spinning=SPINNING)
    with contextlib.ExitStack() as stack:
        runners = {name: stack.enter_context(OnnxRuntimeRunner(path, settings)).run for name, path in models.items()}
        return interleaved(runners, [feeds], CHECK, Monitor())


def judge(measured: Measurement, feeds: dict) -> dict:
    """The record: the speed-up, its interval (on-CPU time when other processes disturbed the
    rounds), whether INT8 is measurably faster (the interval's lower end above 1), and how
    long a sleeping thread takes to wake here (with spinning off, a slow wake lowers a
    multi-thread speed-up: edgeport.speed.wakeup)."""
    speed, state = paired_speedup(measured, "fp32", "int8", feeds), summarize(measured.machine)
    return {"vs": "the FP32 input artifact", **speed, "faster": speed["ci95"][0] > 1.0,
            "cpu": cpu_model(), "instruction_sets": instruction_sets(), "thread_wake_us": wake_latency_us(),
            "other_cpu_share": state.get("other_cpu_share"), "disturbed_rounds": state.get("disturbed_rounds")}


def verdict(record: dict) -> str | None:
    """What to tell the user when INT8 is not measurably faster (None when it is)."""
    if record.get("faster", True):
        return None
    low, high = record["ci95"]
    how = "slower than" if high < 1.0 else "not measurably faster than"
    return (f"this INT8 model is {how} FP32 on this host ({record['speedup']:.2f}x, 95% interval "
            f"{low:.2f}-{high:.2f}, {record['feeds']}); the manifest records it, and 'ship' can refuse it with the "
            "gate min_speedup")
