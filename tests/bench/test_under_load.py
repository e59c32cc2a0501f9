"""Figures that hold on a busy machine, tested for real: the bench on the real MiniLM (FP32
against INT8) on a quiet machine, then with CPU-burning processes beside it.  The loaded
report must say it was disturbed and how much, its interleaved ratio must stay within
(generous bounds of) the quiet run's interval, and --strict must refuse to report.
Ratio-based: no absolute time is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager

import pytest

from edgeport.bench.runner import BenchOptions, ReportFiles, run_bench
from edgeport.bench.scenarios import Settings
from edgeport.errors import NoisyMeasurementError
from edgeport.speed import default_threads

pytestmark = pytest.mark.slow
SETTINGS = Settings(rounds=5, min_duration=0.4, min_count=5)
BURN_SECONDS = 120          # the burners' own bound: they stop even if the test dies


@contextmanager
def burning(processes: int):
    """``processes`` children spinning on the CPU, killed on exit (and bounded in time)."""
    code = f"import time\nend = time.time() + {BURN_SECONDS}\nwhile time.time() < end: pass"
    children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]
    try:
        yield
    finally:
        for child in children:
            child.kill()
            child.wait()


def _single_stream(report) -> dict:
    return {r["variant"]: r for r in report.to_dict()["results"] if r["scenario"] == "single-stream"}


def test_a_disturbed_run_is_flagged_and_its_ratio_holds(minilm_onnx, minilm_int8, tmp_path):
    """The loaded run's interval must cover the quiet run's ratio (within 30%).  By the wall
    clock it does not (3.1x quiet, 6.8x loaded, interval 5.6-8.4: a 22 ms FP32 call is
    preempted by the burners far more than a 7 ms INT8 one), so a disturbed run's speed-ups
    come from on-CPU time, the wall-clock ratio kept beside them.  One thread per variant:
    with more, the ratio also measures how each scales with the cores the burners leave it."""
    paths = [str(minilm_onnx.path), str(minilm_int8.path)]
    options = BenchOptions(settings=SETTINGS, measure_memory=False, threads=1)
    quiet = run_bench(paths, options)
    with burning(2 * default_threads()):
        loaded = run_bench(paths, BenchOptions(settings=SETTINGS, measure_memory=False, threads=1,
                                               reports=ReportFiles(json=str(tmp_path / "loaded.json"))))
    quiet_int8, loaded_int8 = _single_stream(quiet)["int8"], _single_stream(loaded)["int8"]
    low, high = loaded_int8["speedup"]["ci95"]
    assert 0.7 * low <= quiet_int8["speedup"]["value"] <= 1.3 * high, (quiet_int8["speedup"], loaded_int8["speedup"])
    assert "on-CPU time" in loaded_int8["speedup"]["method"] and loaded_int8["speedup"]["wall"]["value"] > 0
    state = loaded.machine_state
    assert state["measured"] and state["other_cpu_share"] > 0.25 and state["disturbed_rounds"] >= 3, state
    assert loaded.warnings and "other processes used" in loaded.warnings[0] and "ratios may be off" in loaded.warnings[0]
    assert "speed-ups are from on-CPU time" in loaded.warnings[0]
    assert loaded_int8["disturbed_rounds"] >= 3 and len(loaded_int8["rounds_ms"]) == SETTINGS.rounds
    written = json.loads((tmp_path / "loaded.json").read_text())
    assert written["warnings"] == loaded.warnings and written["machine_state"]["too_busy"]
    assert written["settings"]["threads"] == 1 and "off" in written["settings"]["spinning"]
    assert written["machine"]["instruction_sets"] == quiet.machine["instruction_sets"]
    assert "WARNING: other processes used" in loaded.table()


def test_strict_refuses_to_report_a_busy_machine(cli, minilm_onnx, tmp_path):
    with burning(2 * default_threads()):
        result = cli("bench", minilm_onnx.path, "--strict", "--rounds", "3", "--min-duration", "0.3", "--no-memory",
                     "--json", tmp_path / "r.json")
    assert result.exit_code == NoisyMeasurementError.exit_code, result.output
    assert "too busy" in result.output and not (tmp_path / "r.json").exists()
