"""Accuracy-aware fallback: keep the nodes that hurt most in higher precision, greedily,
until the parity budget holds.

Sensitivity of a node = how much the budget's metric improves when only that node is
left unquantized (measured, not guessed: one build and one evaluation per candidate).
Nodes are then kept in order of sensitivity, re-measuring after each, until the budget
holds; if keeping every candidate is not enough, fail with the best figures reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ParityError
from ..parity import ParityReport


def score(report: ParityReport) -> float:
    """One number, higher is better, for the metric the budget cares about most."""
    thresholds = report.thresholds
    outputs = [report.embedding] if report.embedding else report.outputs
    if "min_p01_cosine" in thresholds:
        return min(o.p01_cosine for o in outputs)
    if "min_cosine" in thresholds:
        return min(o.min_cosine for o in outputs)
    if "min_top1_agreement" in thresholds:
        return min(o.top1_agreement if o.top1_agreement is not None else o.min_cosine for o in report.outputs)
    if "max_abs_err" in thresholds:
        return -max(o.max_abs_err for o in report.outputs)
    return min(o.min_cosine for o in outputs)


@dataclass
class FallbackResult:
    model_file: Path
    report: ParityReport
    kept: list[str]
    ranking: list[tuple[str, float]] = field(default_factory=list)

    def ranking_records(self, top: int = 20) -> list[dict]:
        return [{"node": node, "score_when_kept": round(value, 6)} for node, value in self.ranking[:top]]


def keep_sensitive_nodes(candidates: list[str], build: Callable[[list[str]], Path],
                         evaluate: Callable[[Path], ParityReport], first: FallbackResult,
                         progress: Callable[[str], None] = lambda m: None) -> FallbackResult:
    if first.report.passed:
        return first
    progress(f"budget not met ({first.report.failures[0]}); measuring the sensitivity of {len(candidates)} nodes")
    ranking = []
    for index, node in enumerate(candidates, 1):
        model_file = build([node])
        ranking.append((node, score(evaluate(model_file))))
        model_file.unlink(missing_ok=True)
        progress(f"  sensitivity {index}/{len(candidates)}: {node} -> {ranking[-1][1]:.6f}")
    ranking.sort(key=lambda item: item[1], reverse=True)
    best = first
    kept: list[str] = []
    for node, _ in ranking:
        kept.append(node)
        model_file = build(list(kept))
        report = evaluate(model_file)
        progress(f"  keeping {len(kept)} node(s): {score(report):.6f}")
        if score(report) > score(best.report) or report.passed:
            if best is not first:
                best.model_file.unlink(missing_ok=True)
            best = FallbackResult(model_file, report, list(kept), ranking)
        else:
            model_file.unlink(missing_ok=True)
        if report.passed:
            return best
    raise ParityError(
        f"the budget cannot be met even with all {len(candidates)} quantizable nodes kept in higher precision; "
        f"best reached with {len(best.kept)} kept: " + "; ".join(best.report.failures)
        + f". Figures: {best.report.summary()}"
    )
