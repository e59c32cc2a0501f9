"""The timed scenarios of a bench run: single-stream, offline and sweep as interleaved rounds
(``edgeport.speed``: warm-up until stable, blocks alternating, the machine sampled around
every round), each variant's speed-up over the reference with a 95% interval from the
paired rounds; and the server scenario (Poisson arrivals)."""

from __future__ import annotations

import numpy as np

from typing import Callable

from ..speed import Interrupted, Monitor, cpu_time_is_latency, interleaved, spread
from .inputs import BenchInputs
from .report import BenchReport
from .scenarios import find_max_qps, server_run
from .stats import latency_stats


def planned_blocks(options, inputs: BenchInputs, variants: int) -> int:
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


class Timer:
    """Runs the interleaved scenarios of one report and writes their rows, each with its
    per-round medians, its speed-up over the reference (the first variant) and how many of
    its rounds other processes disturbed."""

    def __init__(self, report: BenchReport, runners: dict[str, Callable], options, meter, monitor: Monitor):
        self.report, self.runners, self.options, self.meter, self.monitor = report, runners, options, meter, monitor
        self.reference = next(iter(runners))
        # With more threads on-CPU time adds up their work, and a variant that spreads well over
        # the cores would lose its credit.
        self.cpu_time = cpu_time_is_latency(options.thread_count()[0], options.spinning)

    def rows(self, scenario: str, params: dict, feeds_cycle: list, rows_per_call: int, label: str) -> dict:
        measurement = interleaved(self.runners, feeds_cycle, self.options.settings, self.monitor,
                                  lambda name: self.meter.step(name, label))
        self.report.machine_rounds.extend(measurement.machine)
        self.report.warmup.setdefault(label, measurement.warmup)
        p50 = {}
        for name in self.runners:
            stats = latency_stats(measurement.samples(name))
            p50[name] = stats.p50_ms
            medians = measurement.round_medians_ms(name)
            row = {"variant": name, "scenario": scenario, "params": params, "latency": stats.to_dict(),
                   "throughput_per_s": rows_per_call * 1000.0 / (stats.mean_ms if scenario == "single-stream"
                                                                else stats.p50_ms),
                   "rounds_ms": medians, "round_spread": spread(medians),
                   "disturbed_rounds": measurement.disturbed_rounds()}
            row["speedup"] = measurement.speedup(self.reference, name, cpu_time=self.cpu_time)
            tokens = _tokens(feeds_cycle)
            if tokens:
                row["tokens"] = tokens
            self.report.results.append(row)
        return p50


def _tokens(feeds_cycle: list) -> int | None:
    """Rows x length of a text model's call (the median over the cycle), for the speed of light."""
    counts = [int(np.prod(feeds["input_ids"].shape[:2])) for feeds in feeds_cycle if "input_ids" in feeds]
    return int(np.median(counts)) if counts else None


def measure_scenarios(report: BenchReport, runners: dict[str, Callable], inputs: BenchInputs, options, progress,
                      meter, monitor: Monitor) -> None:
    timer = Timer(report, runners, options, meter, monitor)
    single_ms: dict[str, float] = {}
    if "single-stream" in options.scenarios or "server" in options.scenarios:
        progress("single-stream: batch 1, one query at a time...")
        single_ms = timer.rows("single-stream", {"batch": 1}, inputs.single(), 1, "single-stream")
        if "single-stream" not in options.scenarios:
            report.results = [r for r in report.results if r["scenario"] != "single-stream"]
    if "offline" in options.scenarios:
        for batch in options.batch_sizes:
            progress(f"offline: batch {batch}...")
            feeds = inputs.batch(batch)
            rows = len(next(iter(feeds.values())))
            timer.rows("offline", {"batch": rows}, [feeds], rows, f"offline b{batch}")
    if "sweep" in options.scenarios:
        for batch in options.batch_sizes:
            for length in options.sequence_lengths:
                feeds = inputs.of_length(batch, length)
                if feeds is None:
                    break
                sequence = int(feeds["input_ids"].shape[1])
                progress(f"sweep: batch {batch}, sequence {sequence}...")
                timer.rows("sweep", {"batch": batch, "sequence": sequence}, [feeds], batch,
                           f"sweep b{batch} s{sequence}")
    if "server" in options.scenarios:
        for name, run in runners.items():
            _server(report, name, run, inputs, options, single_ms[name], progress)
            meter.step(name, "server")


def _server(report: BenchReport, name: str, run, inputs: BenchInputs, options, single_ms: float, progress) -> None:
    rate = options.server_rate or 0.5 * 1000.0 / max(single_ms, 1e-3)
    progress(f"server: {name} at {rate:.1f} requests/s (Poisson)...")
    try:
        latencies, served = server_run(run, inputs.single(), rate, options.server_queries)
        stats = latency_stats(latencies)
    except KeyboardInterrupt:
        raise Interrupted({}) from None
    # params: the rate asked for (--rate), or the default's rule, so that two runs' rows match in
    # bench compare (half the capacity is measured anew each run); offered: the rate it came to.
    # throughput: what the one worker served (lower when it fell behind).
    asked = {"rate_per_s": round(rate, 3)} if options.server_rate else {"rate": "half capacity"}
    result = {"variant": name, "scenario": "server", "params": asked, "offered_rate_per_s": round(rate, 3),
              "latency": stats.to_dict(), "throughput_per_s": round(min(served, rate), 3)}
    if options.p99_bound_ms is not None:
        result["p99_bound_ms"] = options.p99_bound_ms
        result["bound_held"] = stats.p99_ms <= options.p99_bound_ms
    if options.find_max_qps:
        progress(f"server: searching the highest rate {name} serves with p99 <= {options.p99_bound_ms} ms...")
        best, probes = find_max_qps(run, inputs.single(), options.p99_bound_ms, single_ms, options.server_queries)
        result["max_qps"] = best
        result["max_qps_probes"] = probes
    report.results.append(result)
