"""``edgeport bench``: several artifacts (and optionally the PyTorch source) measured side by
side on the same real inputs, in one process, interleaved; plus parity against a
reference and per-variant size, memory and start-up measured in fresh processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..artifact import Artifact, now_iso
from ..data import concat_padded, examples_for, stdlib_sentences
from ..errors import InvalidOptionError
from .machine import machine_info
from .report import BenchReport
from .scenarios import SCENARIOS, Settings, find_max_qps, interleaved_latency, server_run
from .stats import latency_stats
from .verify import ParityBudget, measure_parity


@dataclass
class BenchOptions:
    scenarios: list[str] = field(default_factory=lambda: ["single-stream"])
    baseline_torch: bool = False
    data: str | None = None
    reference: str | None = None          # default: the first artifact
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    sequence_lengths: list[int] = field(default_factory=lambda: [16, 64, 128, 256])
    server_rate: float | None = None      # requests/s; default: half of what one worker can serve
    server_queries: int = 200
    p99_bound_ms: float | None = None
    find_max_qps: bool = False
    budget: ParityBudget = field(default_factory=ParityBudget)
    settings: Settings = field(default_factory=Settings)
    measure_memory: bool = True
    threads: int | None = None


def _check(options: BenchOptions, paths: list[str]) -> None:
    if not paths:
        raise InvalidOptionError("give at least one artifact to benchmark")
    unknown = [s for s in options.scenarios if s not in SCENARIOS]
    if unknown:
        raise InvalidOptionError(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if any(b < 1 for b in options.batch_sizes) or any(s < 2 for s in options.sequence_lengths):
        raise InvalidOptionError("batch sizes must be >= 1 and sequence lengths >= 2")
    if options.find_max_qps and options.p99_bound_ms is None:
        raise InvalidOptionError("--find-max-qps needs --p99-bound-ms")


class _Inputs:
    """Real inputs shaped for each scenario, the same for every variant."""

    def __init__(self, reference: Artifact, data: str | None):
        from ..runtime.processing import TextProcessor

        self.artifact = reference
        self.examples = examples_for(reference, data, role="eval", batch_size=1)
        processing = reference.manifest.processing
        names = [s["name"] for s in reference.manifest.graph["inputs"]]
        self.text = TextProcessor.from_manifest(reference.path, processing, names) if processing.get("tokenizer") else None
        self.max_length = int(processing.get("max_length", 512))
        self.sentences = stdlib_sentences(64) if data is None else None
        self._long: dict | None = None

    def single(self) -> list[dict]:
        return self.examples.batches

    def batch(self, size: int) -> dict:
        rows = self.examples.batches
        if self.text is not None and self.sentences is not None:
            return self.text.encode(self.sentences[:size])
        picked = [rows[i % len(rows)] for i in range(size)]
        return {k: concat_padded([p[k] for p in picked]) for k in picked[0]}

    def of_length(self, size: int, length: int) -> dict | None:
        if self.text is None:
            return None
        length = min(length, self.max_length)
        if self._long is None:   # real prose, tokenized once and cut to each length
            self._long = self.text.encode([" ".join(stdlib_sentences(120))])
        encoded = self._long
        return {k: np.ascontiguousarray(np.repeat(v[:, :length], size, axis=0)) for k, v in encoded.items()}


def _onnx_runner(artifact: Artifact, threads: int | None) -> tuple[Callable, dict]:
    from ..runtime import load

    start = time.perf_counter()
    model = load(artifact.path, device="cpu", threads=threads, verify=False, spinning=False)
    created = (time.perf_counter() - start) * 1000
    info = {"name": artifact.path.name, "path": str(artifact.path), "kind": "onnx",
            "precision": artifact.manifest.precision.get("mode", "fp32"), "size_bytes": artifact.size_bytes(),
            "provider": model.provider, "session_create_ms": round(created, 1)}
    return model.run, info


def _torch_runner(reference: Artifact) -> tuple[Callable, dict]:
    from ..errors import require

    require("torch", "export")
    import torch

    from ..export.prepare import prepare_hf

    export = next((e for e in reversed(reference.manifest.lineage) if e["stage"] == "export"), None)
    source = export and export["parameters"].get("source")
    if not source or not Path(source).is_dir():
        raise InvalidOptionError("--baseline torch needs the Hugging Face folder the reference was exported from; "
                                 f"its lineage names '{source}', which is not there")
    start = time.perf_counter()
    job = prepare_hf(Path(source), export["parameters"].get("task"), False, False, 128)
    created = (time.perf_counter() - start) * 1000

    def run(feeds):
        with torch.no_grad():
            return job.module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in job.input_names])

    return run, {"name": "torch (eager FP32)", "path": source, "kind": "torch", "precision": "fp32",
                 "size_bytes": None, "provider": "torch-cpu", "session_create_ms": round(created, 1)}


_MEMORY_PROBE = (
    "import json, resource, sys, time\n"
    "start = time.perf_counter()\n"
    "from edgeport.runtime import load\n"
    "from edgeport.data import examples_for\n"
    "model = load(sys.argv[1], device='cpu', verify=False)\n"
    "created = time.perf_counter() - start\n"
    "examples = examples_for(model.artifact, None if sys.argv[2] == '-' else sys.argv[2], limit=8, batch_size=1)\n"
    "first = time.perf_counter()\n"
    "for feeds in examples.batches: model.run(feeds)\n"
    "print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
    " 'cold_start_ms': (created + time.perf_counter() - first) * 1000}))\n"
)


def _memory(artifact: Artifact, data: str | None) -> dict:
    """Peak resident memory and cold start, in a fresh process so variants do not mix."""
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(artifact.path), data or "-"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {"peak_rss_mb": None, "cold_start_ms": None}
    return {k: round(v, 1) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def run_bench(paths: list[str], options: BenchOptions, progress: Callable[[str], None] = lambda m: None,
              tick: Callable[[], None] = lambda: None) -> BenchReport:
    _check(options, paths)
    artifacts = [Artifact.load(p) for p in paths]
    reference = Artifact.load(options.reference) if options.reference else artifacts[0]
    inputs = _Inputs(reference, options.data)
    runners: dict[str, Callable] = {}
    variants = []
    for artifact in artifacts:
        run, info = _onnx_runner(artifact, options.threads)
        info["name"] = _unique(info["name"], runners)
        if options.measure_memory:
            info.update(_memory(artifact, options.data))
        runners[info["name"]] = run
        variants.append(info)
    if options.baseline_torch:
        run, info = _torch_runner(reference)
        runners[info["name"]] = run
        variants.append(info)

    report = BenchReport(created=now_iso(), machine=machine_info(), variants=variants, results=[],
                         parity={}, reference=str(reference.path), data=inputs.examples.description,
                         thresholds=options.budget.thresholds())
    try:
        _measure(report, runners, inputs, options, progress, tick)
    except KeyboardInterrupt:
        report.interrupted = True
        progress("interrupted: reporting what was measured")
        return report
    progress("measuring parity...")
    parity_examples = examples_for(reference, options.data, role="eval")
    for artifact, info in zip(artifacts, variants):
        report.parity[info["name"]] = measure_parity(
            artifact.model_path, reference.model_path, parity_examples, reference.task, options.budget,
            reference_name=f"'{reference.path}'").to_dict()
    return report


def _unique(name: str, taken) -> str:
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name} ({index})", index + 1
    return candidate


def _interleaved_stats(runners, feeds_cycle: list, settings: Settings, tick) -> dict:
    """Latency statistics per variant; a Ctrl-C inside the loop ends the run here."""
    samples = interleaved_latency(runners, feeds_cycle, settings, tick)
    if samples.pop("__interrupted__", None) is not None:
        raise KeyboardInterrupt
    return {name: latency_stats(values) for name, values in samples.items()}


def _measure(report: BenchReport, runners, inputs: _Inputs, options: BenchOptions, progress, tick) -> None:
    settings = options.settings
    single_ms: dict[str, float] = {}
    if "single-stream" in options.scenarios or "server" in options.scenarios:
        progress("single-stream: batch 1, one query at a time...")
        for name, stats in _interleaved_stats(runners, inputs.single(), settings, tick).items():
            single_ms[name] = stats.p50_ms
            if "single-stream" in options.scenarios:
                report.results.append({"variant": name, "scenario": "single-stream", "params": {"batch": 1},
                                       "latency": stats.to_dict(), "throughput_per_s": 1000.0 / stats.mean_ms})
    if "offline" in options.scenarios:
        for batch in options.batch_sizes:
            progress(f"offline: batch {batch}...")
            for name, stats in _interleaved_stats(runners, [inputs.batch(batch)], settings, tick).items():
                report.results.append({"variant": name, "scenario": "offline", "params": {"batch": batch},
                                       "latency": stats.to_dict(), "throughput_per_s": batch * 1000.0 / stats.p50_ms})
    if "sweep" in options.scenarios:
        for batch in options.batch_sizes:
            for length in options.sequence_lengths:
                feeds = inputs.of_length(batch, length)
                if feeds is None:
                    break
                progress(f"sweep: batch {batch}, sequence {feeds['input_ids'].shape[1]}...")
                for name, stats in _interleaved_stats(runners, [feeds], settings, tick).items():
                    report.results.append({"variant": name, "scenario": "sweep",
                                           "params": {"batch": batch, "sequence": int(feeds["input_ids"].shape[1])},
                                           "latency": stats.to_dict(), "throughput_per_s": batch * 1000.0 / stats.p50_ms})
    if "server" in options.scenarios:
        for name, run in runners.items():
            rate = options.server_rate or 0.5 * 1000.0 / max(single_ms[name], 1e-3)
            progress(f"server: {name} at {rate:.1f} requests/s (Poisson)...")
            stats = latency_stats(server_run(run, inputs.single(), rate, options.server_queries))
            tick()
            result = {"variant": name, "scenario": "server", "params": {"rate_per_s": round(rate, 3)},
                      "latency": stats.to_dict(), "throughput_per_s": rate}
            if options.p99_bound_ms is not None:
                result["p99_bound_ms"] = options.p99_bound_ms
                result["bound_held"] = stats.p99_ms <= options.p99_bound_ms
            if options.find_max_qps:
                progress(f"server: searching the highest rate {name} serves with p99 <= {options.p99_bound_ms} ms...")
                best, probes = find_max_qps(run, inputs.single(), options.p99_bound_ms, single_ms[name],
                                            options.server_queries)
                result["max_qps"] = best
                result["max_qps_probes"] = probes
            report.results.append(result)
