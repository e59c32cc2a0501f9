"""Which graph the dynamic INT8 recipe quantizes: the plain export or ONNX Runtime's fused
attention, chosen by timing both on this host.

Fused attention (QAttention once quantized) does the QKV projection, the scores, the
softmax and the context in one operator where the plain export has about fifteen per layer.
Whether that pays depends on the CPU, the thread count and the batch: ONNX Runtime spreads
each operator over its threads, a sleeping thread takes tens of microseconds to wake on the
VMs measured, and INT8 operators are short.  Measured on all-MiniLM-L6-v2, sequence 128,
the same recipe on both graphs, ratio to ORT FP32 (Intel Xeon, AVX-512 VNNI + AMX, 2 cores;
benchmarks/quantize_minilm.py):

    threads  spinning   batch 1: plain  fused    batch 8: plain  fused
    1        -                   3.00x  3.17x             3.00x  2.87x
    2        off                 1.91x  2.34x             2.32x  2.38x
    2        on                  2.25x  2.56x             2.54x  2.59x

On an AMD EPYC (Zen 3, AVX2 without VNNI, 2 cores, spinning off), the default recipe with
its outlier split on each graph, `edgeport bench run --scenario sweep`, sequence 128: plain
1.34x and fused 1.56x at batch 1, 1.37x and 1.46x at batch 8; the quantize-time timing on
that host read fused 1.09x (0.88-1.40) and 1.12x (0.88-1.25), intervals a noisy 2-core VM
rarely closes in a few seconds.

So both are quantized as they come (nothing kept in FP32, no split) and timed side by side
at batch 1 on this host's threads, spinning off (as the INT8-against-FP32 check is), in
interleaved rounds.  The faster over its whole 95% interval is taken; where the interval
does not settle it, the faster median (both graphs go through the same accuracy check
afterwards, so the choice is one of speed only, and waiting for proof cost the AVX2 host
above its faster graph).  The manifest records both timings and the interval.  For
another machine's target nothing can be timed here: fused attention is taken, ONNX
Runtime's own path for BERT on CPU and the faster at batch 1 on the host measured, with the
plain graph as the fallback if it fails.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import EdgeportError
from ..runtime.onnxrt import OnnxRuntimeRunner
from . import graph
from .encoder import EncoderJob
from .speedcheck import measure_models, paired_speedup
from .targets import detect_host, runs_here

PLAIN = "plain export"
FUSED_ATTENTION = "fused attention (QAttention)"


@dataclass
class Structure:
    name: str
    prepare: Callable[[EncoderJob], Path]     # writes the graph to quantize, smoothed and ready


@dataclass
class _Ready:
    structure: Structure
    job: EncoderJob          # a copy of the job holding the notes and levers its preparation wrote
    prepared: Path
    quantized: Path          # nothing kept in FP32


def choose_structure(job: EncoderJob, candidates: list[Structure], build: Callable[[Path], Path],
                     asked: str | None = None, try_run: Callable[[Path], None] | None = None) -> Path:
    """The prepared graph to quantize (``build(prepared)`` quantizes one, nothing kept).
    ``candidates``: the plain export first, then fused attention if the optimizer found any;
    ``asked``: the --attention the user gave, when not auto (then one candidate).  Records the
    choice in ``job.details['structure']``, merges the winner's notes and levers, and keeps
    its quantized graph as the job's first candidate.  The plain export failing is an error;
    fused attention failing to prepare, quantize or run (``try_run``: one evaluation example
    through ONNX Runtime by default) only leaves it out."""
    try_run = try_run or (lambda quantized: _try_run(job, quantized))
    if len(candidates) == 1:
        ready = _ready(job, candidates[0], build, None)
        record = _record(False, ready, [ready], f"asked for (--attention {asked})") if asked else None
        return _take(job, ready, record, [ready])
    plain, fused = candidates
    if not runs_here(job.target):
        # Nothing can be timed: fused attention, with the plain export only as its fallback.
        try:
            chosen = _ready(job, fused, build, try_run)
        except _failures() as exc:
            chosen = _ready(job, plain, build, None)
            return _take(job, chosen, _record(False, chosen, [chosen], _left_out(fused, exc)), [chosen])
        why = (f"target {job.target.name} is not this host ({detect_host()}), so nothing can be timed: fused "
               "attention, ONNX Runtime's path for BERT on CPU and the faster at batch 1 where it was measured")
        return _take(job, chosen, _record(False, chosen, [chosen], why), [chosen])
    first = _ready(job, plain, build, None)
    try:
        second = _ready(job, fused, build, try_run)
    except _failures() as exc:
        return _take(job, first, _record(False, first, [first], _left_out(fused, exc)), [first])
    return _timed(job, first, second)


def _timed(job: EncoderJob, plain: _Ready, fused: _Ready) -> Path:
    job.say("timing the plain and the fused-attention graph, both quantized, on this host...")
    feeds = job.evaluation.first_example()
    measured = measure_models({PLAIN: plain.quantized, FUSED_ATTENTION: fused.quantized}, feeds)
    speed = paired_speedup(measured, PLAIN, FUSED_ATTENTION, feeds)
    take_fused, why = fused_or_plain(speed["speedup"], speed["ci95"])
    chosen = fused if take_fused else plain
    record = _record(True, chosen, [plain, fused], why, measured)
    record.update({"fused_speedup": speed["speedup"], "ci95": speed["ci95"], "method": speed["method"],
                   "threads": speed["threads"], "spinning": speed["spinning"], "feeds": speed["feeds"]})
    return _take(job, chosen, record, [plain, fused])


def fused_or_plain(speedup: float, ci95: list[float]) -> tuple[bool, str]:
    """Whether to take fused attention, which ran ``speedup`` times the plain graph (paired
    95% interval ``ci95``), and why: the faster over its whole interval, else the faster median."""
    low, high = ci95
    take_fused = speedup > 1.0
    shown = f"{speedup:.2f}" if f"{speedup:.2f}" != "1.00" else f"{speedup:.4f}"     # 1.004 is not 'ran 1.00x'
    figures = f"fused attention ran {shown}x ({low:.2f}-{high:.2f}) the plain graph here"
    if low > 1.0:
        return take_fused, f"{figures}: faster over its whole 95% interval"
    if high < 1.0:
        return take_fused, f"{figures}: slower over its whole 95% interval, so the graph as exported"
    taken = FUSED_ATTENTION if take_fused else PLAIN
    return take_fused, (f"{figures}: the interval does not settle it, so the one with the faster median of "
                        f"per-round ratios: {taken}")


def _ready(job: EncoderJob, candidate: Structure, build: Callable[[Path], Path],
           try_run: Callable[[Path], None] | None) -> _Ready:
    scratch = dataclasses.replace(job, notes=[], levers=[], details={})
    prepared = candidate.prepare(scratch)
    quantized = build(prepared)
    if try_run is not None:
        try_run(quantized)
    return _Ready(candidate, scratch, prepared, quantized)


def _try_run(job: EncoderJob, quantized: Path) -> None:
    with OnnxRuntimeRunner(quantized) as runner:
        runner.run(job.evaluation.first_example())


def _failures() -> tuple[type[BaseException], ...]:
    return (EdgeportError,) + graph.tool_failures()


def _left_out(candidate: Structure, exc: BaseException) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return (f"{candidate.name} did not prepare, quantize or run ({type(exc).__name__}: {first_line}), "
            "so the plain export")


def _record(measured: bool, chosen: _Ready, ready: list[_Ready], why: str, timing=None) -> dict:
    def latency(item: _Ready):
        if timing is None:
            return None
        samples = timing.samples(item.structure.name)
        return round(float(sorted(samples)[len(samples) // 2]) * 1000, 3) if len(samples) else None
    return {"measured": measured, "chosen": chosen.structure.name, "why": why,
            "candidates": [{"graph": r.structure.name, "latency_ms": latency(r)} for r in ready]}


def _take(job: EncoderJob, chosen: _Ready, record: dict | None, ready: list[_Ready]) -> Path:
    job.notes.extend(chosen.job.notes)
    job.levers.extend(chosen.job.levers)
    if record is not None:
        job.details["structure"] = record
    job.first_candidate = chosen.quantized
    for other in ready:
        if other is not chosen:
            other.quantized.unlink(missing_ok=True)
    return chosen.prepared
