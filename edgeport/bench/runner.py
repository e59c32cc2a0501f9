"""``edgeport bench``: several artifacts (and any extra runner the caller hands in, such as
the PyTorch baseline) measured side by side on the same real inputs, in one process,
interleaved; plus parity against a reference, and per-variant size, memory and start-up
measured in fresh processes.

Everything that can be refused is refused before the first measurement: options, every
artifact, and the report files (which follow the same output rules as every writer).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from ..artifact import Artifact
from ..data import concat_padded, examples_for, stdlib_sentences
from ..errors import CalibrationDataError, InvalidOptionError
from ..manifest import now_iso
from ..outputs import HTML_REPORT, JSON_REPORT, check_output
from ..parity import ParityBudget, measure, reference_outputs
from ..runtime import load
from ..runtime.onnxrt import OnnxRuntimeRunner
from ..runtime.runner import Runner
from ..vocabulary import DEVICES, SCENARIOS
from .machine import machine_info
from .memory import measure_memory
from .report import BenchReport
from .scenarios import Interrupted, Settings, find_max_qps, interleaved_latency, server_run
from .stats import latency_stats

MAX_BATCH = 4096
LABELLED_TASKS = ("text-classification", "image-classification")   # one class per example


@dataclass
class ReportFiles:
    json: str | None = None
    html: str | None = None
    force: bool = False


@dataclass
class BenchOptions:
    scenarios: list[str] = field(default_factory=lambda: ["single-stream"])
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
    reports: ReportFiles = field(default_factory=ReportFiles)
    max_new_tokens: int = 32              # generation: tokens per request
    domains: list[str] = field(default_factory=list)   # held-out text domains for worst-case parity
    labels: str | None = None             # true classes of the --data examples: adds accuracy
    device: str = "cpu"                   # where ONNX artifacts run (engines always run on TensorRT)

    def check(self, paths: list[str]) -> None:
        if not paths:
            raise InvalidOptionError("give at least one artifact to benchmark")
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown or not self.scenarios:
            raise InvalidOptionError(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        if not self.batch_sizes or any(not 1 <= b <= MAX_BATCH for b in self.batch_sizes):
            raise InvalidOptionError(f"--batch-sizes must be between 1 and {MAX_BATCH}")
        if not self.sequence_lengths or any(s < 2 for s in self.sequence_lengths):
            raise InvalidOptionError("--sequence-lengths must be >= 2")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InvalidOptionError(f"--max-new-tokens must be a whole number >= 1 (got {self.max_new_tokens!r})")
        if not isinstance(self.server_queries, int) or self.server_queries < 1:
            raise InvalidOptionError(f"--queries must be a whole number >= 1 (got {self.server_queries!r})")
        for name, value in (("--rate", self.server_rate), ("--p99-bound-ms", self.p99_bound_ms)):
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise InvalidOptionError(f"{name} must be a finite number > 0 (got {value!r})")
        from ..data.domains import DOMAINS

        unknown_domains = [d for d in self.domains if d not in DOMAINS]
        if unknown_domains:
            raise InvalidOptionError(f"unknown domain {', '.join(unknown_domains)}; choose from {', '.join(DOMAINS)}")
        if self.device not in DEVICES:
            raise InvalidOptionError(f"--device must be one of {', '.join(DEVICES)} (got {self.device!r})")
        if self.labels and not self.data:
            raise InvalidOptionError("--labels gives the classes of the --data examples; give --data too")
        if self.find_max_qps and self.p99_bound_ms is None:
            raise InvalidOptionError("--find-max-qps needs --p99-bound-ms")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InvalidOptionError(f"--threads must be a whole number >= 1 (got {self.threads!r})")
        inputs = [p for p in paths] + ([self.reference] if self.reference else [])
        if self.reports.json and self.reports.html and str(self.reports.json) == str(self.reports.html):
            raise InvalidOptionError("--json and --html name the same file")
        if self.reports.json:
            check_output(self.reports.json, self.reports.force, inputs, JSON_REPORT, "--json")
        if self.reports.html:
            check_output(self.reports.html, self.reports.force, inputs, HTML_REPORT, "--html")


class Meter(Protocol):
    """Where a long bench shows where it is: the number of blocks, then one call per block."""

    def start(self, total: int) -> None: ...
    def step(self, variant: str, scenario: str) -> None: ...
    def finish(self) -> None: ...


class _NoMeter:
    def start(self, total: int) -> None:
        pass

    def step(self, variant: str, scenario: str) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class Variant:
    """One row of the bench: a runner and what is known about it."""

    name: str
    runner: Runner
    info: dict


class _Inputs:
    """Real inputs shaped for each scenario, the same for every variant."""

    def __init__(self, reference: Artifact, data: str | None):
        from ..runtime.processing import TextProcessor

        self.examples = examples_for(reference, data, role="eval", batch_size=1)
        processing = reference.manifest.processing
        self.text = TextProcessor.from_artifact(reference) if processing.get("tokenizer") else None
        self.max_length = int(processing.get("max_length", 512))
        self.sentences = stdlib_sentences(64) if data is None and self.text is not None else None
        self._long: dict | None = None

    def single(self) -> list[dict]:
        return list(self.examples.batches)

    def batch(self, size: int) -> dict:
        """``size`` rows exactly: real sentences (or examples) repeated as needed."""
        if self.sentences is not None:
            return self.text.encode([self.sentences[i % len(self.sentences)] for i in range(size)])
        rows = self.examples.batches
        picked = [rows[i % len(rows)] for i in range(size)]
        return {k: concat_padded([p[k] for p in picked]) for k in picked[0]}

    def of_length(self, size: int, length: int) -> dict | None:
        if self.text is None:
            return None
        length = min(length, self.max_length)
        if self._long is None:   # real prose, tokenized once and cut to each length
            self._long = self.text.encode([" ".join(stdlib_sentences(120))])
        return {k: np.ascontiguousarray(np.repeat(v[:, :length], size, axis=0)) for k, v in self._long.items()}


def artifact_variant(artifact: Artifact, threads: int | None, taken, device: str = "cpu") -> Variant:
    """An artifact loaded for the bench: ONNX graphs on ``device``, engines on TensorRT."""
    start = time.perf_counter()
    model = load(artifact.path, device=device, threads=threads, check_files=False, spinning=False)
    created = (time.perf_counter() - start) * 1000
    name = _unique(artifact.path.name, taken)
    info = {"name": name, "path": str(artifact.path), "kind": artifact.manifest.graph["format"],
            "manifest_sha256": artifact.manifest_sha256,
            "precision": artifact.manifest.precision.get("mode", "fp32"), "size_bytes": artifact.size_bytes(),
            "provider": model.provider, "session_create_ms": round(created, 1)}
    return Variant(name, model.runner, info)


def run_bench(paths: list[str], options: BenchOptions, extra: list[Variant] = (),
              progress: Callable[[str], None] = lambda m: None, meter: Meter | None = None) -> BenchReport:
    options.check(paths)
    meter = meter or _NoMeter()
    artifacts = [Artifact.load(p) for p in paths]
    generative = [a.task == "text-generation" for a in artifacts]
    if any(generative):
        if not all(generative):
            raise InvalidOptionError("bench measures causal LMs (task text-generation) and other models separately")
        from .generation_runner import run_generation_bench

        return run_generation_bench(artifacts, options, extra, progress, meter)
    if "generation" in options.scenarios:
        raise InvalidOptionError("the generation scenario is for causal LMs (task text-generation)")
    reference = Artifact.load(options.reference) if options.reference else artifacts[0]
    if reference.manifest.graph["format"] != "onnx":
        raise InvalidOptionError(f"parity is measured against an ONNX artifact, and '{reference.path}' holds a "
                                 f"{reference.manifest.graph['format']} graph: list the ONNX artifact first, or give "
                                 "--reference")
    if options.domains and not reference.manifest.processing.get("tokenizer"):
        raise InvalidOptionError("--domains measures text models on held-out text; this model takes no text")
    inputs = _Inputs(reference, options.data)
    labels = _labels(reference, options, inputs.examples.count)
    variants: list[Variant] = []
    for artifact in artifacts:
        variant = artifact_variant(artifact, options.threads, {v.name for v in variants}, options.device)
        if options.measure_memory:
            progress(f"memory and cold start of {variant.name} (fresh process)...")
            variant.info.update(measure_memory(str(artifact.path), options.data))
        variants.append(variant)
    for variant in extra:
        variant.name = variant.info["name"] = _unique(variant.name, {v.name for v in variants})
        variants.append(variant)

    report = BenchReport(created=now_iso(), machine=machine_info(), variants=[v.info for v in variants], results=[],
                         parity={}, reference=str(reference.path), data=inputs.examples.description,
                         thresholds=options.budget.thresholds())
    try:
        meter.start(_blocks(options, inputs, len(variants)))
        _measure(report, {v.name: v.runner.run for v in variants}, inputs, options, progress, meter)
        progress("measuring parity...")
        _parity(report, variants, reference, options, labels)
    except Interrupted:
        report.interrupted = True
        progress("interrupted: reporting what was measured")
    finally:
        meter.finish()
        for variant in variants:
            variant.runner.close()
    report.write(options.reports)
    return report


def _labels(reference: Artifact, options: BenchOptions, count: int) -> np.ndarray | None:
    """The --labels, checked against the model and the data before anything is measured."""
    if not options.labels:
        return None
    from ..data import read_labels

    if reference.task not in LABELLED_TASKS:
        raise InvalidOptionError(f"--labels measures the accuracy of classifiers (one class per example); this is "
                                 f"a {reference.task} model")
    labels = read_labels(options.labels, reference.manifest.processing.get("labels"))
    if len(labels) != count:
        raise CalibrationDataError(f"'{options.labels}' has {len(labels)} labels but '{options.data}' holds "
                                   f"{count} examples")
    return labels


def _accuracy(runner: Runner, examples, labels: np.ndarray) -> dict:
    """Top-1 accuracy of the classifier's first output (its logits) against the true classes."""
    predicted = np.concatenate([np.asarray(next(iter(runner.run(feeds).values()))).argmax(-1)
                                for feeds in examples.batches])
    return {"samples": len(labels), "top1": round(float((predicted == labels).mean()), 6)}


def _parity(report: BenchReport, variants: list[Variant], reference: Artifact, options: BenchOptions,
            labels: np.ndarray | None = None) -> None:
    examples = examples_for(reference, options.data, role="eval")
    with OnnxRuntimeRunner(reference.model_path, inputs=reference.manifest.inputs) as runner:
        expected = reference_outputs(runner, examples)
    try:
        for variant in variants:
            report.parity[variant.name] = measure(variant.runner, expected, examples, reference.task, options.budget,
                                                  reference_name=f"'{reference.path}'").to_dict()
            if labels is not None:
                report.parity[variant.name]["accuracy"] = _accuracy(variant.runner, examples, labels)
        _domain_parity(report, variants, reference, options)
    except KeyboardInterrupt:
        raise Interrupted({}) from None


DOMAIN_SENTENCES = {"docstrings": 300, "legal": 300, "science": 140}


def _domain_parity(report: BenchReport, variants: list[Variant], reference: Artifact, options: BenchOptions) -> None:
    """Worst-case parity per held-out text domain: what a user sees on text unlike the
    calibration data (figures of the pooled embedding for feature extraction)."""
    if not options.domains:
        return
    from ..data.domains import domain_sentences

    for domain in options.domains:
        texts = domain_sentences(domain, DOMAIN_SENTENCES[domain])
        examples = examples_for(reference, texts=texts, description=f"{len(texts)} {domain} sentences")
        with OnnxRuntimeRunner(reference.model_path, inputs=reference.manifest.inputs) as runner:
            expected = reference_outputs(runner, examples)
        for variant in variants:
            figures = measure(variant.runner, expected, examples, reference.task).headline()
            report.parity[variant.name].setdefault("domains", {})[domain] = {
                "samples": len(texts), "mean_cosine": figures.mean_cosine, "p01_cosine": figures.p01_cosine,
                "min_cosine": figures.min_cosine}


def _unique(name: str, taken) -> str:
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name} ({index})", index + 1
    return candidate


def _blocks(options: BenchOptions, inputs: _Inputs, variants: int) -> int:
    """How many timed blocks the run will have (for the progress bar)."""
    per_measurement = options.settings.rounds * variants
    count = 0
    if "single-stream" in options.scenarios or "server" in options.scenarios:
        count += per_measurement
    if "offline" in options.scenarios:
        count += per_measurement * len(options.batch_sizes)
    if "sweep" in options.scenarios and inputs.text is not None:
        count += per_measurement * len(options.batch_sizes) * len(options.sequence_lengths)
    if "server" in options.scenarios:
        count += variants
    return count


def _stats(runners, feeds_cycle: list, settings: Settings, meter: Meter, scenario: str) -> dict:
    samples = interleaved_latency(runners, feeds_cycle, settings, lambda name: meter.step(name, scenario))
    return {name: latency_stats(values) for name, values in samples.items()}


def _measure(report: BenchReport, runners, inputs: _Inputs, options: BenchOptions, progress, meter: Meter) -> None:
    settings = options.settings
    single_ms: dict[str, float] = {}
    if "single-stream" in options.scenarios or "server" in options.scenarios:
        progress("single-stream: batch 1, one query at a time...")
        for name, stats in _stats(runners, inputs.single(), settings, meter, "single-stream").items():
            single_ms[name] = stats.p50_ms
            if "single-stream" in options.scenarios:
                report.results.append({"variant": name, "scenario": "single-stream", "params": {"batch": 1},
                                       "latency": stats.to_dict(), "throughput_per_s": 1000.0 / stats.mean_ms})
    if "offline" in options.scenarios:
        for batch in options.batch_sizes:
            progress(f"offline: batch {batch}...")
            feeds = inputs.batch(batch)
            rows = len(next(iter(feeds.values())))
            for name, stats in _stats(runners, [feeds], settings, meter, f"offline b{batch}").items():
                report.results.append({"variant": name, "scenario": "offline", "params": {"batch": rows},
                                       "latency": stats.to_dict(), "throughput_per_s": rows * 1000.0 / stats.p50_ms})
    if "sweep" in options.scenarios:
        for batch in options.batch_sizes:
            for length in options.sequence_lengths:
                feeds = inputs.of_length(batch, length)
                if feeds is None:
                    break
                sequence = int(feeds["input_ids"].shape[1])
                progress(f"sweep: batch {batch}, sequence {sequence}...")
                for name, stats in _stats(runners, [feeds], settings, meter, f"sweep b{batch} s{sequence}").items():
                    report.results.append({"variant": name, "scenario": "sweep",
                                           "params": {"batch": batch, "sequence": sequence},
                                           "latency": stats.to_dict(), "throughput_per_s": batch * 1000.0 / stats.p50_ms})
    if "server" in options.scenarios:
        for name, run in runners.items():
            _server(report, name, run, inputs, options, single_ms[name], progress)
            meter.step(name, "server")


def _server(report: BenchReport, name: str, run, inputs: _Inputs, options: BenchOptions, single_ms: float,
            progress) -> None:
    rate = options.server_rate or 0.5 * 1000.0 / max(single_ms, 1e-3)
    progress(f"server: {name} at {rate:.1f} requests/s (Poisson)...")
    try:
        stats = latency_stats(server_run(run, inputs.single(), rate, options.server_queries))
    except KeyboardInterrupt:
        raise Interrupted({}) from None
    result = {"variant": name, "scenario": "server", "params": {"rate_per_s": round(rate, 3)},
              "latency": stats.to_dict(), "throughput_per_s": rate}
    if options.p99_bound_ms is not None:
        result["p99_bound_ms"] = options.p99_bound_ms
        result["bound_held"] = stats.p99_ms <= options.p99_bound_ms
    if options.find_max_qps:
        progress(f"server: searching the highest rate {name} serves with p99 <= {options.p99_bound_ms} ms...")
        best, probes = find_max_qps(run, inputs.single(), options.p99_bound_ms, single_ms, options.server_queries)
        result["max_qps"] = best
        result["max_qps_probes"] = probes
    report.results.append(result)
