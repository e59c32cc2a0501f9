"""Which graph the dynamic INT8 recipe quantizes: the plain export or ONNX Runtime's fused
attention, chosen by timing both on this host.

Fused attention (QAttention once quantized) does the QKV projection, the scores, the
softmax and the context in one operator where the plain export has about fifteen per layer.
Whether that pays depends on the CPU and the thread count: ONNX Runtime spreads each
operator over its threads, a sleeping thread takes tens of microseconds to wake on the VMs
measured, and INT8 operators are short.  Measured on all-MiniLM-L6-v2, batch 1, sequence
128, the same recipe on both graphs (Intel Xeon, AVX-512 VNNI + AMX, 2 cores):

    threads  spinning   plain    fused attention
    1        -          7.55 ms  7.34 ms
    2        off        8.27 ms  6.86 ms
    2        on         6.60 ms  5.58 ms

So both are quantized as they come (nothing kept in FP32, no split) and timed side by side
on this host, and the search goes on from the faster one; the manifest records both.  For
another machine's target nothing can be timed here, and the fused graph is taken: it was
the faster one everywhere it was measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import EdgeportError
from ..runtime.onnxrt import OnnxRuntimeRunner
from .encoder import EncoderJob, LatencyProbe
from .targets import detect_host, runs_here

PLAIN = "plain export"
FUSED_ATTENTION = "fused attention (QAttention)"


@dataclass
class Structure:
    name: str
    prepare: Callable[[EncoderJob], Path]     # writes the graph to quantize, smoothed and ready


@dataclass
class _Prepared:
    structure: Structure
    job: EncoderJob          # a copy of the job holding the notes and levers its preparation wrote
    prepared: Path
    quantized: Path          # nothing kept in FP32


# What onnx, ONNX Runtime and its quantizer raise on a graph they cannot handle.
FAILURES = (EdgeportError, ValueError, RuntimeError, KeyError, IndexError, TypeError, AssertionError)


def choose_structure(job: EncoderJob, candidates: list[Structure], build: Callable[[Path], Path],
                     asked: str | None = None) -> Path:
    """The prepared graph of the faster candidate (``build(prepared)`` quantizes one, nothing
    kept); records the choice in ``job.details['structure']``, merges the winner's notes and
    levers, and keeps its quantized graph as the job's first candidate.  The first candidate
    is the plain export: any other that fails to prepare, quantize or run is left out, never
    fatal.  ``asked``: the --attention the user gave, when not auto (one candidate)."""
    ready: list[_Prepared] = []
    left_out: list[str] = []
    for index, candidate in enumerate(candidates):
        scratch = dataclasses.replace(job, notes=[], levers=[], details={})
        try:
            prepared = candidate.prepare(scratch)
            quantized = build(prepared)
            if index:
                with OnnxRuntimeRunner(quantized) as runner:
                    runner.run({name: value[:1] for name, value in job.evaluation.batches[0].items()})
        except FAILURES as exc:
            if not index:
                raise
            left_out.append(f"{candidate.name} did not prepare, quantize or run ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        ready.append(_Prepared(candidate, scratch, prepared, quantized))
    if len(candidates) == 1:
        record = {"measured": False, "chosen": candidates[0].name, "candidates": [candidates[0].name],
                  "why": f"asked for (--attention {asked})"} if asked else None
        return _take(job, ready[0], record, ready)
    if len(ready) == 1:
        return _take(job, ready[0], {"measured": False, "chosen": ready[0].structure.name,
                                     "candidates": [c.name for c in candidates], "why": "; ".join(left_out)}, ready)
    if not runs_here(job.target):
        chosen = next(r for r in ready if r.structure.name == FUSED_ATTENTION)
        return _take(job, chosen, {
            "measured": False, "chosen": FUSED_ATTENTION, "candidates": [c.name for c in candidates],
            "why": f"target {job.target.name} is not this host ({detect_host()}), so nothing can be timed; "
                   "fused attention was the faster graph everywhere it was measured"}, ready)
    job.say("timing the plain and the fused-attention graph, both quantized, on this host...")
    with LatencyProbe(job.evaluation) as latency:
        timed = [(r, latency(r.quantized)) for r in ready]
    chosen, fastest_ms = min(timed, key=lambda item: item[1])
    slowest_ms = max(ms for _, ms in timed)
    return _take(job, chosen, {
        "measured": True, "chosen": chosen.structure.name,
        "candidates": [{"graph": r.structure.name, "latency_ms": round(ms, 3)} for r, ms in timed],
        "why": f"the faster on this host, {slowest_ms / fastest_ms:.2f}x the other (latency of one evaluation "
               "example, interleaved; nothing kept in FP32)"}, ready)


def _take(job: EncoderJob, chosen: _Prepared, record: dict | None, ready: list[_Prepared]) -> Path:
    job.notes.extend(chosen.job.notes)
    job.levers.extend(chosen.job.levers)
    if record is not None:
        job.details["structure"] = record
    if chosen.structure.name == FUSED_ATTENTION:
        job.levers.append(FUSED_ATTENTION)
    job.first_candidate = chosen.quantized
    for other in ready:
        if other is not chosen:
            other.quantized.unlink(missing_ok=True)
    return chosen.prepared
