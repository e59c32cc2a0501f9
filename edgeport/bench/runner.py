"""``edgeport bench``: several artifacts (and any extra runner the caller hands in, such as
the PyTorch baseline) measured side by side on the same real inputs, in one process,
interleaved, on equal footing (one thread count and one spinning policy for every variant); the
machine's state measured before, between and after the rounds; parity against a
reference; and per-variant size, memory and start-up measured in fresh processes.

Everything that can be refused is refused before the first measurement: options, every
artifact, and the report files (which follow the same output rules as every writer).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from ..artifact import Artifact
from ..data import shared_text_length
from ..errors import InvalidOptionError, ParityError, refuse_unused
from ..manifest import now_iso
from ..outputs import HTML_REPORT, JSON_REPORT, check_output
from ..parity import ParityBudget, check_same_model
from ..runtime import load
from ..runtime.formats import format_of
from ..runtime.runner import Runner
from ..speed import Interrupted, Monitor, Settings, default_threads, machine_info
from ..vocabulary import (DEFAULT_BATCH_SIZES, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SEQUENCE_LENGTHS, DEFAULT_SERVER_QUERIES,
                          DEVICES, SCENARIOS)
from .accuracy import measure_parity, read_bench_labels
from .inputs import BenchInputs
from .memory import measure_memory
from .report import BenchReport
from .scenarios import spinning_policy
from .timing import measure_scenarios, planned_blocks

MAX_BATCH = 4096
QUIET_SAMPLE_S = 0.5        # how long the machine is watched, idle, before and after the rounds
MAX_SERVER_SECONDS = 3600   # the server scenario's longest run (--queries at --rate)


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
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    sequence_lengths: list[int] = field(default_factory=lambda: list(DEFAULT_SEQUENCE_LENGTHS))
    server_rate: float | None = None      # requests/s; default: half of what one worker can serve
    server_queries: int = DEFAULT_SERVER_QUERIES
    p99_bound_ms: float | None = None
    find_max_qps: bool = False
    budget: ParityBudget = field(default_factory=ParityBudget)
    settings: Settings = field(default_factory=Settings)
    measure_memory: bool = True
    threads: int | None = None
    reports: ReportFiles = field(default_factory=ReportFiles)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS    # generation: tokens per request
    domains: list[str] = field(default_factory=list)   # held-out text domains for worst-case parity
    labels: str | None = None             # true classes of the --data examples: adds accuracy
    device: str = "cpu"                   # where ONNX artifacts run (engines always run on TensorRT)
    strict: bool = False                  # refuse to report figures taken on a machine too busy to trust
    speed_of_light: bool = False          # each ONNX variant's fraction of this machine's GEMM floor
    spinning: bool = False                # ONNX Runtime's threads spin between ops (its default outside the bench)
    given: frozenset = frozenset()        # the options the user wrote (CLI): refused where they would be ignored

    def thread_count(self) -> tuple[int, str]:
        """Every variant's intra-op threads, and where the number came from."""
        if self.threads is not None:
            return self.threads, "--threads"
        return default_threads(), "the physical cores this process may use (affinity and cgroup quota)"

    def check(self, paths: list[str]) -> None:
        if not paths:
            raise InvalidOptionError("give at least one artifact to benchmark")
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        scenarios = set(self.scenarios)
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
        if self.server_rate and self.server_queries / self.server_rate > MAX_SERVER_SECONDS:
            # 1e-9 requests/s showed "at 0.0 requests/s" and waited for ever
            raise InvalidOptionError(f"--rate {self.server_rate:g} requests/s would take "
                                     f"{self.server_queries / self.server_rate:,.0f} s for --queries "
                                     f"{self.server_queries}; the server scenario runs at most {MAX_SERVER_SECONDS} s")
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
        server_only = [name for name, given in (("--rate", self.server_rate is not None),
                                                ("--p99-bound-ms", self.p99_bound_ms is not None),
                                                ("--find-max-qps", self.find_max_qps)) if given]
        if server_only and "server" not in self.scenarios:
            raise InvalidOptionError(f"{', '.join(server_only)} set the server scenario; add --scenario server "
                                     "(they are ignored otherwise)")
        refuse_unused((("--batch-sizes", "--batch-sizes" in self.given and not {"offline", "sweep"} & scenarios),
                       ("--sequence-lengths", "--sequence-lengths" in self.given and "sweep" not in scenarios),
                       ("--queries", "--queries" in self.given and "server" not in scenarios)),
                      "to the scenarios asked for (--batch-sizes: offline and sweep; --sequence-lengths: sweep; "
                      "--queries: server); add the --scenario they set")
        if self.settings.min_count > self.settings.max_count:
            raise InvalidOptionError(f"--min-count must be at most {self.settings.max_count} (a timed block stops at "
                                     f"{self.settings.max_count} calls); got {self.settings.min_count}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InvalidOptionError(f"--threads must be a whole number >= 1 (got {self.threads!r})")
        for option, path in (("--json", self.reports.json), ("--html", self.reports.html)):
            if path is not None and not str(path).strip():
                raise InvalidOptionError(f"{option} needs a file name")
        # the data and labels files too: a report written over its own --data lost the data
        inputs = [p for p in paths] + [p for p in (self.reference, self.data, self.labels) if p]
        if self.reports.json and self.reports.html and \
                Path(self.reports.json).resolve() == Path(self.reports.html).resolve():      # ./r.json, a link
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


def artifact_variant(artifact: Artifact, threads: int | None, taken, device: str = "cpu",
                     spinning: bool = False) -> Variant:
    """An artifact loaded for the bench: ONNX graphs on ``device``, engines on TensorRT,
    ExecuTorch programs on the CPU."""
    if device not in format_of(artifact).devices:
        device = "auto"
    start = time.perf_counter()
    model = load(artifact.path, device=device, threads=threads, check_files=False, spinning=spinning)
    created = (time.perf_counter() - start) * 1000
    name = unique_name(folder_name(artifact.path), taken)
    info = {"name": name, "path": str(artifact.path), "kind": format_of(artifact).kind,
            "manifest_sha256": artifact.manifest_sha256,
            "precision": artifact.manifest.precision.get("mode", "fp32"), "size_bytes": artifact.size_bytes(),
            "provider": model.provider, "session_create_ms": round(created, 1)}
    return Variant(name, model.runner, info)


def _batches_beyond(variant: Variant, options: BenchOptions) -> str | None:
    """Why the batch sizes (or sweep lengths) asked for cannot be timed on ``variant``: more
    than its engine takes in one call, said before anything is measured; None when they can."""
    highest = variant.runner.shape_range.get("input_ids", ((), ()))[1]
    if "sweep" in options.scenarios and len(highest) > 1:
        longest = highest[1]
        beyond = [n for n in options.sequence_lengths if n > longest]
        if beyond:
            return (f"'{variant.name}' takes sequences of at most {longest} tokens (the bound it was built for), "
                    f"so sequence {', '.join(map(str, beyond))} cannot be timed on it; give --sequence-lengths "
                    f"within 2..{longest}")
    largest = variant.runner.max_rows
    if largest is None or not {"offline", "sweep"} & set(options.scenarios):
        return None
    beyond = [b for b in options.batch_sizes if b > largest]
    if not beyond:
        return None
    within = [b for b in options.batch_sizes if b <= largest] or [largest]
    return (f"'{variant.name}' takes at most {largest} rows a call (the batch bound it was built for), so "
            f"batch {', '.join(map(str, beyond))} cannot be timed on it; give --batch-sizes "
            f"{','.join(map(str, within))}")


def footing(options: BenchOptions) -> dict:
    """What every variant runs with, for the report."""
    threads, source = options.thread_count()
    return {"threads": threads, "threads_from": source, "spinning": spinning_policy(options.spinning),
            "rounds": options.settings.rounds, "min_duration_s": options.settings.min_duration,
            "min_count": options.settings.min_count, "max_count": options.settings.max_count,
            "warmup": {"until": f"the coefficient of variation of {options.settings.window} calls <= "
                                f"{options.settings.settle_cv:g}, or two windows' medians within "
                                f"{options.settings.settle_drift:.0%}",
                       "bound": f"{options.settings.warmup_max_calls} calls or {options.settings.warmup_max_seconds:g} s"}}


def quiet_state(monitor: Monitor) -> dict | None:
    """The machine while the bench itself is idle: what everything else is doing."""
    start = monitor.sample()
    time.sleep(QUIET_SAMPLE_S)
    return monitor.between(start, monitor.sample())


# What the generation bench (causal LMs) does not use: it times real docstring prompts in
# interleaved rounds of whole requests and measures parity against the first artifact.
NOT_FOR_CAUSAL_LMS = ("--reference", "--data", "--labels", "--domains", "--speed-of-light", "--min-cosine",
                      "--min-p01-cosine", "--max-abs-error", "--min-top1-agreement", "--min-duration", "--min-count",
                      "--batch-sizes", "--sequence-lengths")


_LM_SHAPE = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads")


def _check_same_lm(candidate: Artifact, reference: Artifact) -> None:
    """Two causal LMs of other shapes (from the Hugging Face config each artifact carries) are
    not two variants of one model: their speed-up and token agreement were reported as if they were."""
    def shape(artifact: Artifact) -> dict | None:
        try:
            config = json.loads((artifact.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return {key: config.get(key) for key in _LM_SHAPE} if isinstance(config, dict) else None

    theirs, ours = shape(candidate), shape(reference)
    differ = [f"{key} {theirs[key]} / {ours[key]}" for key in _LM_SHAPE if theirs and ours and theirs[key] != ours[key]]
    if differ:
        raise ParityError(f"'{candidate.path}' and '{reference.path}' are not the same model ({', '.join(differ)}); "
                          "bench compares variants of one model")


def check_bench(paths: list[str], options: BenchOptions) -> tuple[list[Artifact], Artifact]:
    """Every refusal a bench run can make before it loads a model: the options, the artifacts
    (one kind of model, comparable with the reference), and options their kind ignores.
    The artifacts and the reference."""
    options.check(paths)
    artifacts = [Artifact.load(p) for p in paths]
    generative = [a.task == "text-generation" for a in artifacts]
    if any(generative):
        if not all(generative):
            raise InvalidOptionError("bench measures causal LMs (task text-generation) and other models separately")
        for artifact in artifacts[1:]:                  # an encoder pair gets check_same_model below
            _check_same_lm(artifact, artifacts[0])
        refuse_unused([(name, name in options.given) for name in NOT_FOR_CAUSAL_LMS]
                      + [(f"--device {options.device}", options.device != "cpu")],
                      "to causal LMs: the generation bench runs them on the CPU on real docstring prompts, whole "
                      "requests in interleaved rounds, with parity (greedy tokens, perplexity) against the first")
        return artifacts, artifacts[0]
    refuse_unused([("--max-new-tokens", "--max-new-tokens" in options.given)],
                  "to models other than causal LMs (task text-generation)")
    if "generation" in options.scenarios:
        raise InvalidOptionError("the generation scenario is for causal LMs (task text-generation)")
    reference = Artifact.load(options.reference) if options.reference else artifacts[0]
    options.budget.check_task(reference.task)
    for artifact in artifacts:          # refused before the first measurement, not after the timing
        check_same_model(artifact, reference, f"'{artifact.path}'")
    if not reference.manifest.processing.get("tokenizer"):
        refuse_unused((("--domains", options.domains), ("--scenario sweep", "sweep" in options.scenarios),
                       ("--speed-of-light", options.speed_of_light)),
                      "to a model that takes no text (--domains: held-out text; sweep: sequence lengths; "
                      "--speed-of-light: weight GEMMs per token)")
    return artifacts, reference


def run_bench(paths: list[str], options: BenchOptions, extra: list[Variant] = (),
              progress: Callable[[str], None] = lambda m: None, meter: Meter | None = None,
              checked: tuple[list[Artifact], Artifact] | None = None) -> BenchReport:
    """``checked``: what ``check_bench(paths, options)`` returned, when the caller ran it first
    (the CLI does, before the baseline loads): every artifact's files are hashed once."""
    artifacts, reference = checked or check_bench(paths, options)
    meter = meter or _NoMeter()
    if reference.task == "text-generation":
        from .generation_runner import run_generation_bench

        return run_generation_bench(artifacts, options, extra, progress, meter)
    longest = shared_text_length(reference, *artifacts)     # each variant sees the tokens the shortest takes
    inputs = BenchInputs(reference, options.data, longest)
    cut = [n for n in options.sequence_lengths if n > inputs.max_length] if inputs.text is not None else []
    defaults = tuple(options.sequence_lengths) == DEFAULT_SEQUENCE_LENGTHS and "--sequence-lengths" not in options.given
    if cut and defaults:
        # the defaults, not the user's choice: sweep the lengths this tokenizer makes, its longest included
        kept = [n for n in options.sequence_lengths if n < inputs.max_length] + [inputs.max_length]
        options, cut = dataclasses.replace(options, sequence_lengths=kept), []
    if "sweep" in options.scenarios and cut:
        raise InvalidOptionError(f"the reference's tokenizer cuts text at {inputs.max_length} tokens (its "
                                 f"processing.max_length), so sequence {', '.join(map(str, cut))} would time "
                                 f"{inputs.max_length} tokens; give --sequence-lengths within 2..{inputs.max_length}")
    labels = read_bench_labels(reference, options, inputs.examples.count)
    threads, _ = options.thread_count()
    variants: list[Variant] = []
    for artifact in artifacts:
        variant = artifact_variant(artifact, threads, {v.name for v in variants}, options.device, options.spinning)
        too_large = _batches_beyond(variant, options)
        if too_large:
            for loaded in variants + [variant]:
                loaded.runner.close()
            raise InvalidOptionError(too_large)
        if options.measure_memory:
            progress(f"memory and cold start of {variant.name} (fresh process)...")
            variant.info.update(measure_memory(str(artifact.path), options.data))
        variants.append(variant)
    for variant in extra:
        variant.name = variant.info["name"] = unique_name(variant.name, {v.name for v in variants})
        variants.append(variant)

    report = BenchReport(created=now_iso(), machine=machine_info(), variants=[v.info for v in variants], results=[],
                         parity={}, reference=str(reference.path), data=inputs.examples.description,
                         thresholds=options.budget.thresholds(), settings=footing(options))
    monitor = Monitor()
    try:
        report.machine_quiet["before"] = quiet_state(monitor)
        meter.start(planned_blocks(options, inputs, len(variants)))
        measure_scenarios(report, {v.name: v.runner.run for v in variants}, inputs, options, progress, meter, monitor)
        report.machine_quiet["after"] = quiet_state(monitor)
        if options.speed_of_light:
            progress("the speed of light: this machine's FP32 and INT8 GEMM peaks...")
            speed_of_light(report, variants, artifacts, options.thread_count()[0])
        progress("measuring parity...")
        measure_parity(report, variants, reference, options, labels, longest)
    except Interrupted:
        report.interrupted = True
        progress("interrupted: stopping")
    finally:
        meter.finish()
        for variant in variants:
            variant.runner.close()
    report.finish(options.reports, options.strict)
    return report


def speed_of_light(report: BenchReport, variants: list[Variant], artifacts: list[Artifact], threads: int) -> None:
    """Each ONNX variant's rows get its floor (its weight GEMMs at this machine's peak) and
    the fraction of it the median reached (edgeport.speed.floor)."""
    from ..speed.floor import floor_record, gemm_peaks, weight_ops_per_row

    peaks = gemm_peaks(threads)
    report.machine["gemm_peaks_gops"] = {kind: round(value / 1e9, 1) for kind, value in peaks.items()}
    work = {}
    for variant, artifact in zip(variants, artifacts):
        if artifact.model_path.suffix == ".onnx":        # ONNX graphs: their weight GEMMs can be counted
            work[variant.name] = (weight_ops_per_row(artifact.model_path), variant.info.get("precision", "fp32"))
    for row in report.results:
        if row["variant"] in work and row.get("tokens"):
            ops, precision = work[row["variant"]]
            row["speed_of_light"] = floor_record(ops, row["tokens"], precision, row["latency"]["p50_ms"], peaks)


def folder_name(path: Path) -> str:
    """A variant's name: its folder's, also for '.' and '..' (which named a variant '')."""
    return Path(os.path.abspath(path)).name or str(path)


def unique_name(name: str, taken) -> str:
    """``name``, or ``name (2)``, ``name (3)``... the first not in ``taken``: a report's rows
    are keyed by variant name."""
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name} ({index})", index + 1
    return candidate


