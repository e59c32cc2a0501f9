"""Timing helpers shared by the benchmark scripts (not tests).

This VM is noisy (medians move up to 1.6x between rounds), and two ONNX Runtime sessions
alive in one process disturb each other through spinning threads.  So: sessions are made
with spinning off, variants are timed in interleaved blocks of calls with a pause between
blocks, every variant gets several rounds, and results are reported as ratios against a
baseline measured in the same rounds.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def ort_session(path, threads: int | None = None, spinning: bool = False):
    """``spinning``: ONNX Runtime's threads spin between operators within a run (its own
    default) but stop when the run returns (force_spinning_stop), so that a session's idle
    threads do not slow the next variant down."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if spinning:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved(variants: dict, rounds: int = 5, calls: int = 20, warmup: int = 3, pause: float = 0.2) -> dict:
    """``variants``: name -> zero-argument callable.  Returns name -> per-round medians (ms)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    medians = {name: [] for name in variants}
    for round_index in range(rounds):
        names = list(variants)
        if round_index % 2:
            names.reverse()          # alternate the order so drift hits everyone alike
        for name in names:
            fn = variants[name]
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times) * 1000)
            time.sleep(pause)
    return medians


def summarize(medians: dict, baseline: str) -> list[dict]:
    rows = []
    base = np.array(medians[baseline])
    for name, values in medians.items():
        values = np.array(values)
        rows.append({"variant": name, "median_ms": float(np.median(values)), "min_ms": float(values.min()),
                     "rounds_ms": [round(v, 2) for v in values],
                     # ratio per round, then the median: robust to drift between rounds
                     f"speedup_vs_{baseline}": float(np.median(base / values))})
    return rows


def print_table(rows: list[dict], extra: list[str] = ()) -> None:
    keys = ["variant", "median_ms", "min_ms"] + [k for k in rows[0] if k.startswith("speedup")] + list(extra)
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.4f}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys))
