"""Accuracy-aware fallback: keep the nodes that hurt most in higher precision, greedily, until
the parity budget holds, reporting for every node kept its measured sensitivity, the score
reached and what it cost in latency.

Ranking.  INT8 recipes rank nodes by their *local* quantization error: each weight node's
output computed with its input and weight quantized (as dynamic quantization will) against
the FP32 output, on the calibration data, worst row first — one pass over the graph.  On
all-MiniLM-L6-v2 it ranks the feed-forward output MatMuls of layers 0, 2, 1 first, the
same three a leave-one-out search (one build and evaluation per node, 25 builds, 2.3
minutes) put first.  Other recipes use that leave-one-out search.

Score.  The budget's own metric, worst case first: 1st-percentile cosine, min cosine,
top-1 agreement, max abs error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ParityError
from ..parity import ParityReport
from . import graph


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
class Step:
    node: str
    sensitivity: float           # local error (INT8) or the score with only this node kept (leave-one-out)
    score: float | None = None   # the budget's metric once this node (and those before) are kept
    latency_ms: float | None = None


@dataclass
class FallbackResult:
    model_file: Path
    report: ParityReport
    kept: list[str]
    steps: list[Step] = field(default_factory=list)
    latency_ms: float | None = None            # of the candidate with nothing kept
    split: bool = False                        # int8-dynamic: the feed-forward outlier split taken

    def ranking_records(self, top: int = 20) -> list[dict]:
        records = []
        for step in self.steps[:top]:
            record = {"node": step.node, "sensitivity": round(step.sensitivity, 6)}
            if step.score is not None:
                record["score_when_kept"] = round(step.score, 6)
            if step.latency_ms is not None:
                record["latency_ms"] = round(step.latency_ms, 3)
                if self.latency_ms:
                    record["latency_cost_ms"] = round(step.latency_ms - self.latency_ms, 3)
            records.append(record)
        return records


def local_error_ranking(model, candidates: list[str], batches, reduce_range: bool) -> list[tuple[str, float]]:
    """Nodes by the error their own quantization adds to their output (99th percentile over
    rows): activations quantized to uint8 with each batch's range, weights per output channel."""
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    wanted = set(candidates)
    nodes = [n for n in model.graph.node if n.name in wanted and n.op_type in ("MatMul", "Gemm", "Attention")
             and len(n.input) > 1 and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    weights = {}
    for node in nodes:
        # float32: the same order as float64 on MiniLM's calibration data (values within 1.2e-4 relative
        # of each other) at half the time, most of it these products.
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        weights[node.name] = weight.T if transposed else weight
    ranked = _rank_nodes(model, nodes, weights, batches, reduce_range) if nodes else []
    # Nodes the proxy cannot model (convolutions, fused embeddings) come last, in graph order.
    seen = {name for name, _ in ranked}
    return ranked + [(name, 0.0) for name in candidates if name not in seen]


def _rank_nodes(model, nodes, weights, batches, reduce_range: bool) -> list[tuple[str, float]]:
    session = graph.session_with_outputs(model, sorted({n.input[0] for n in nodes}))
    names = [o.name for o in session.get_outputs()]
    levels = 63 if reduce_range else 127
    quantized = {}
    for name, weight in weights.items():
        step = np.maximum(np.abs(weight).max(axis=0), 1e-12) / levels
        quantized[name] = np.round(weight / step) * step
    errors: dict[str, list] = {n.name: [] for n in nodes}
    for feeds in batches:
        values = dict(zip(names, session.run(names, feeds)))
        mask = feeds.get("attention_mask")
        for node in nodes:
            x = values[node.input[0]].astype(np.float32)
            if mask is not None and x.ndim == 3 and x.shape[:2] == mask.shape:
                x = x[mask.astype(bool)]
            x = x.reshape(-1, x.shape[-1])
            low, high = min(x.min(), 0.0), max(x.max(), 0.0)
            scale = (high - low) / 255 or 1.0
            zero = np.round(-low / scale)
            x_q = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
            exact, approx = x @ weights[node.name], x_q @ quantized[node.name]
            norms = np.linalg.norm(exact, axis=1) * np.linalg.norm(approx, axis=1)
            cosine = (exact * approx).sum(axis=1) / np.where(norms > 0, norms, 1)
            errors[node.name].append(1 - cosine)
    ranking = [(name, float(np.percentile(np.concatenate(values), 99))) for name, values in errors.items()]
    return sorted(ranking, key=lambda item: item[1], reverse=True)


def leave_one_out_ranking(candidates: list[str], build: Callable[[list[str]], Path],
                          evaluate: Callable[[Path], ParityReport], progress=lambda m: None) -> list[tuple[str, float]]:
    """Nodes by how much the budget's metric improves when only that node is kept."""
    ranking = []
    for index, node in enumerate(candidates, 1):
        model_file = build([node])
        ranking.append((node, score(evaluate(model_file))))
        model_file.unlink(missing_ok=True)
        progress(f"  sensitivity {index}/{len(candidates)}: {node} -> {ranking[-1][1]:.6f}")
    return sorted(ranking, key=lambda item: item[1], reverse=True)


def keep_sensitive_nodes(ranking: list[tuple[str, float]], build: Callable[[list[str]], Path],
                         evaluate: Callable[[Path], ParityReport], first: FallbackResult,
                         measure_latency: Callable[[Path], float] | None = None, max_kept: int | None = None,
                         required: bool = True, progress: Callable[[str], None] = lambda m: None) -> FallbackResult:
    """Keep ranked nodes one by one until ``evaluate`` passes.  When even ``max_kept`` nodes
    (or all) are not enough: raise ParityError with the best figures reached, or, when not
    ``required``, return the best candidate."""
    if first.report.passed:
        return first
    if measure_latency:
        first.latency_ms = measure_latency(first.model_file)
    best, kept, steps = first, [], []
    for node, sensitivity in ranking[:max_kept]:
        kept.append(node)
        model_file = build(list(kept))
        report = evaluate(model_file)
        step = Step(node, sensitivity, score(report), measure_latency(model_file) if measure_latency else None)
        steps.append(step)
        progress(f"  keeping {len(kept)} node(s) in higher precision: {score(report):.6f}"
                 + (f", {step.latency_ms:.2f} ms" if step.latency_ms else ""))
        if score(report) > score(best.report) or report.passed:
            if best is not first:
                best.model_file.unlink(missing_ok=True)
            best = FallbackResult(model_file, report, list(kept), steps, first.latency_ms)
        else:
            model_file.unlink(missing_ok=True)
        if report.passed:
            best.steps = steps
            return best
    best.steps = steps
    if not required:
        return best
    raise ParityError(
        f"the budget cannot be met even with {len(kept)} of {len(ranking)} candidate nodes kept in higher precision; "
        f"best reached with {len(best.kept)} kept: " + "; ".join(best.report.failures)
        + f". Figures: {best.report.summary('; ')}")
