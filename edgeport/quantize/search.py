"""The speed-aware search: when an INT8 candidate misses its budget, what to keep in higher
precision is chosen by the accuracy it buys per millisecond it costs on this host, not by
accuracy alone.

Each step tries the options in reach (the outlier split in the first step, and later only
when no node is left; the most sensitive node not yet kept), builds and measures each (the
budget's score on the check data, and latency on this host, interleaved with the first
candidate), and takes the fastest that passes; if none passes, the one with the best score
gained per millisecond lost.  Every candidate measured is recorded (the frontier), with
why the search stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..parity import ParityReport
from .sensitivity import FallbackResult, Step, score

NODES_PER_STEP = 1


@dataclass
class Option:
    name: str
    description: str
    node: str | None = None          # a node kept in FP32; None: the outlier split
    sensitivity: float = 0.0         # the node's rank score (sensitivity.py)


@dataclass
class _Trial:
    option: Option
    split: bool
    kept: list[str]
    model_file: Path
    report: ParityReport
    latency_ms: float


def speed_aware_search(options: list[Option], build: Callable[[bool, list[str]], Path],
                       check: Callable[[Path], ParityReport], first: FallbackResult, latency: Callable[[Path], float],
                       max_kept: int | None, say: Callable[[str], None]) -> tuple[FallbackResult, dict]:
    """From ``first`` (nothing kept, no split), step until ``check`` passes; returns the
    chosen candidate and the frontier record for the manifest."""
    base_ms = latency(first.model_file)
    current = FallbackResult(first.model_file, first.report, [], latency_ms=base_ms)
    current_ms, split, chosen_steps = base_ms, False, []
    steps = [_record("base", first.report, base_ms, base_ms, chosen=True)]
    split_option = next((o for o in options if o.node is None), None)
    stopped = "the first candidate passed"
    while not current.report.passed:
        nodes = [o for o in options if o.node and o.node not in current.kept][:NODES_PER_STEP] \
            if max_kept is None or len(current.kept) < max_kept else []
        first_step = len(steps) == 1
        trials = ([split_option] if split_option and not split and (first_step or not nodes) else []) + nodes
        if not trials:
            stopped = (f"nothing left to try (at most {max_kept} node(s) kept)" if max_kept is not None
                       else "nothing left to try")
            break
        measured = []
        for option in trials:
            kept = current.kept + ([option.node] if option.node else [])
            model_file = build(split or option.node is None, kept)
            report, ms = check(model_file), latency(model_file)
            measured.append(_Trial(option, split or option.node is None, kept, model_file, report, ms))
            say(f"  {_label(split or option.node is None, kept)}: {score(report):.6f}, {ms:.2f} ms"
                f"{' (passes)' if report.passed else ''}")
        chosen = _choose(measured, current, current_ms, base_ms)
        for trial in measured:
            steps.append(_record(_label(trial.split, trial.kept), trial.report, trial.latency_ms, base_ms,
                                 chosen=trial is chosen))
            if trial is not chosen:
                trial.model_file.unlink(missing_ok=True)
        if chosen.option.node:
            chosen_steps.append(Step(chosen.option.node, chosen.option.sensitivity, score(chosen.report),
                                     chosen.latency_ms))
        current = FallbackResult(chosen.model_file, chosen.report, chosen.kept, list(chosen_steps),
                                 latency_ms=base_ms, split=chosen.split)
        current_ms, split = chosen.latency_ms, chosen.split
    if current.report.passed and len(steps) > 1:
        stopped = "the fastest candidate that passes was found"
    frontier = {"thresholds": first.report.thresholds, "metric": "score of the budget's first metric (min cosine "
                "unless the budget says otherwise) on the check data; latency of one example on this host",
                "base_latency_ms": round(base_ms, 3), "steps": steps, "stopped": stopped}
    return current, frontier


def _choose(measured: list[_Trial], current: FallbackResult, current_ms: float, base_ms: float) -> _Trial:
    """The fastest trial that passes; else the best score gained per millisecond lost (a
    trial that costs nothing counts as costing 1% of the first candidate's latency)."""
    passing = [t for t in measured if t.report.passed]
    if passing:
        return min(passing, key=lambda t: t.latency_ms)
    before = score(current.report)
    return max(measured, key=lambda t: (score(t.report) - before) / max(t.latency_ms - current_ms, 0.01 * base_ms))


def _label(split: bool, kept: list[str]) -> str:
    parts = (["outlier split"] if split else []) + [f"keep {node}" for node in kept]
    return " + ".join(parts) or "base"


def _record(label: str, report: ParityReport, ms: float, base_ms: float, chosen: bool) -> dict:
    return {"candidate": label, "score": round(score(report), 6), "passed": report.passed,
            "latency_ms": round(ms, 3), "speed_vs_base": round(base_ms / ms, 4) if ms else None, "chosen": chosen}
