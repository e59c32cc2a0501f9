"""``BenchReport``: the results of one bench run, as JSON (versioned schema) and as a
terminal table; the HTML page is html.py.

Schema version 2 added, per variant, ``manifest_sha256`` and ``rss_before_load_mb``, and
per result ``speedup`` (against the reference variant, with a 95% interval).  Version 4
added what makes a figure trustworthy: ``settings`` (threads, spinning, warm-up),
``machine_state`` (other processes' share of the CPUs, steal, load and clock, before,
during and after the rounds; a noise figure), ``warnings``, and per result its per-round
medians, how many of its rounds were disturbed, and a speed-up interval from the paired
rounds.  ``bench compare`` reads every version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NoisyMeasurementError, ParityError, RegressionError, StoppedByUser
from ..manifest import json_safe
from ..outputs import HTML_REPORT, JSON_REPORT, SEAL_KEY, seal, seal_placeholder, staged_output
from ..runtime.formats import bench_kinds
from ..speed import describe, summarize
from ..speed.rounds import OWN_ROW, own_speedup
from ..speed.load import DISTURBED_SHARE, DISTURBED_STEAL
from ..speed.wakeup import slow_wake_warning, wake_phrase
from ..vocabulary import SCENARIOS

NOISY_SPREAD = 0.15          # per-round medians of one variant this far apart: say so even on a quiet machine

# Version 3 added parity "accuracy" (bench --labels) and "domains" (bench --domains), and
# variant kinds "tensorrt" and "genai" (the kinds are the graph formats' bench kinds, and
# "torch"); older reports lack them and are read as they are.
REPORT_SCHEMA_VERSION = 4
READABLE_REPORT_VERSIONS = (1, 2, 3, 4)

_NUMBER = {"type": "number"}
_STATS = {"type": "object",
          "required": ["count", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms", "median_ci95_ms"],
          "properties": {"count": {"type": "integer", "minimum": 1}, "mean_ms": _NUMBER, "std_ms": _NUMBER,
                         "min_ms": _NUMBER, "max_ms": _NUMBER, "p50_ms": {"type": "number", "exclusiveMinimum": 0},
                         "p90_ms": _NUMBER, "p99_ms": _NUMBER,
                         "median_ci95_ms": {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}}}
_FIGURE = {"type": ["number", "null"]}
_FIGURES = {"type": "object", "properties": {"min_cosine": _FIGURE, "mean_cosine": _FIGURE,
                                             "max_abs_err": _FIGURE, "top1_agreement": _FIGURE}}
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edgeport bench report",
    "type": "object",
    "required": ["schema_version", "created", "machine", "variants", "results", "parity", "reference", "interrupted"],
    "properties": {
        "schema_version": {"enum": list(READABLE_REPORT_VERSIONS)},
        "created": {"type": "string"},
        "machine": {"type": "object", "required": ["cpu", "cores", "versions"]},
        "variants": {"type": "array", "items": {
            "type": "object", "required": ["name", "kind", "precision", "provider", "session_create_ms"],
            "properties": {"name": {"type": "string", "minLength": 1}, "kind": {"enum": bench_kinds()},
                           "precision": {"type": "string"}, "provider": {"type": "string"},
                           "session_create_ms": _NUMBER, "size_bytes": {"type": ["integer", "null"]},
                           "peak_rss_mb": {"type": ["number", "null"]}}}},
        "results": {"type": "array", "items": {
            "type": "object", "required": ["variant", "scenario", "params", "latency", "throughput_per_s"],
            "properties": {"variant": {"type": "string"}, "scenario": {"enum": list(SCENARIOS)},
                           "params": {"type": "object", "additionalProperties": {"type": ["number", "string"]}},
                           "latency": _STATS, "throughput_per_s": {"type": "number", "minimum": 0},
                           "speedup": {"type": "object", "properties": {"value": _NUMBER, "ci95": {
                               "type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}}},
                           "rounds_ms": {"type": "array", "items": _NUMBER},
                           "disturbed_rounds": {"type": "integer", "minimum": 0},
                           "tokens": {"type": "integer", "minimum": 1},
                           "speed_of_light": {"type": "object", "required": ["peak", "floor_ms", "fraction"]}}}},
        "parity": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["passed"],
            "properties": {"passed": {"type": "boolean"}, "outputs": {"type": "object",
                                                                      "additionalProperties": _FIGURES},
                           "sentence_embedding": _FIGURES,
                           "accuracy": {"type": "object", "required": ["samples", "top1"],
                                        "properties": {"samples": {"type": "integer", "minimum": 1},
                                                       "top1": {"type": "number", "minimum": 0, "maximum": 1}}},
                           "domains": {"type": "object", "additionalProperties": {
                               "type": "object", "required": ["samples", "mean_cosine", "p01_cosine", "min_cosine"],
                               "properties": {"samples": {"type": "integer", "minimum": 1}, "mean_cosine": _FIGURE,
                                              "p01_cosine": _FIGURE, "min_cosine": _FIGURE}}}}}},
        "reference": {"type": "string"},
        "interrupted": {"type": "boolean"},
        "settings": {"type": "object", "properties": {"threads": {"type": "integer", "minimum": 1},
                                                      "spinning": {"type": "string"}}},
        "machine_state": {"type": "object", "properties": {
            "measured": {"type": "boolean"}, "other_cpu_share": _NUMBER, "steal_share": _NUMBER,
            "disturbed_rounds": {"type": "integer", "minimum": 0}, "too_busy": {"type": "boolean"}}},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}


@dataclass
class BenchReport:
    created: str
    machine: dict
    variants: list[dict]
    results: list[dict]
    parity: dict[str, dict]
    reference: str
    data: str = ""
    thresholds: dict = field(default_factory=dict)
    interrupted: bool = False
    settings: dict = field(default_factory=dict)
    machine_rounds: list = field(default_factory=list)      # the machine's state around every timed round
    machine_quiet: dict = field(default_factory=dict)       # ... and while the bench was idle, before and after
    warmup: dict = field(default_factory=dict)
    machine_state: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)        # the report files written
    unwritten: str = ""                                    # why an interrupted run wrote none (or not all)

    def to_dict(self) -> dict:
        return {"schema_version": REPORT_SCHEMA_VERSION, "created": self.created, "machine": self.machine,
                "reference": self.reference, "data": self.data, "thresholds": self.thresholds,
                "interrupted": self.interrupted, "settings": self.settings, "machine_state": self.machine_state,
                "warnings": self.warnings, "variants": self.variants, "results": self.with_speedups(),
                "parity": self.parity}

    def judge_machine(self) -> dict:
        """Summarize the machine's state over the rounds, and the warnings a reader needs:
        other processes' share of the CPUs, steal, how far the figures may be off, and a
        thread wake slow enough to lower multi-thread speed-ups with spinning off."""
        state = summarize(self.machine_rounds)
        quiet = [q for q in (self.machine_quiet.get("before"), self.machine_quiet.get("after")) if q]
        state.update(before=self.machine_quiet.get("before"), after=self.machine_quiet.get("after"), warmup=self.warmup)
        spreads = [r["round_spread"] for r in self.results if r.get("round_spread") is not None]
        state["noise"] = round(float(sorted(spreads)[len(spreads) // 2]), 4) if spreads else None
        widths = [r["speedup"]["ci95"][1] / r["speedup"]["ci95"][0] - 1 for r in self.with_speedups()
                  if r.get("speedup") and r["variant"] != r["speedup"].get("vs") and r["speedup"]["ci95"][0] > 0]
        uncertainty = max(widths) / 2 if widths else (state["noise"] or 0) / 2 if len(self.variants) > 1 else None
        self.machine_state = state
        self.warnings = _disturbance_warnings(state, quiet, uncertainty, self.results) if state.get("measured") else []
        slow_wake = slow_wake_warning(self.machine.get("thread_wakeup"), self.settings.get("threads") or 1,
                                      str(self.settings.get("spinning", "")).startswith("on"))
        if slow_wake:
            self.warnings.append(slow_wake)
        self.warnings.extend(f"the memory and cold-start probe of {v['name']} failed: {v['memory_probe_error']}"
                             for v in self.variants if v.get("memory_probe_error"))
        return state

    def with_speedups(self) -> list[dict]:
        """Every result with its speed-up against the reference variant (the first) in the
        same scenario and parameters: the paired-rounds interval the bench measured, or for
        rows without one (older reports, causal LMs) an interval from the two medians'."""
        reference = self.variants[0]["name"] if self.variants else None
        baseline = {(r["scenario"], json.dumps(r["params"], sort_keys=True)): r for r in self.results
                    if r["variant"] == reference}
        rows = []
        for row in self.results:
            base = baseline.get((row["scenario"], json.dumps(row["params"], sort_keys=True)))
            if base is row:
                row = dict(row, speedup=own_speedup(reference))
            elif base is not None and row["scenario"] != "server" and "speedup" not in row:
                row = dict(row)
                ref, own = base["latency"], row["latency"]
                if own["p50_ms"] > 0 and own["median_ci95_ms"][0] > 0:
                    row["speedup"] = {"value": ref["p50_ms"] / own["p50_ms"],
                                      "ci95": [ref["median_ci95_ms"][0] / own["median_ci95_ms"][1],
                                               ref["median_ci95_ms"][1] / own["median_ci95_ms"][0]],
                                      "vs": reference, "method": "independent medians"}
            rows.append(row)
        return rows

    def finish(self, files, strict: bool = False) -> None:
        """Judge the machine's state; with ``strict``, refuse to report figures taken on a
        machine too busy to trust (nothing is written); otherwise write the report files."""
        state = self.judge_machine()
        if strict and state.get("too_busy"):
            reason = self.warnings[0] if self.warnings else "see the machine state"
            raise NoisyMeasurementError(f"the machine was too busy for these figures to mean anything ({reason}); no "
                                        "report was written: run again on a quieter machine, or without --strict")
        self.write(self._partial_files(files) if self.interrupted else files)

    def _partial_files(self, files):
        """Where an interrupted run writes what it measured: nowhere when no row was
        complete, and never over an existing report (a complete one is not replaced by less)."""
        from dataclasses import replace

        if not self.results:
            self.unwritten = "no row was complete, so no report was written"
            return replace(files, json=None, html=None)
        existing = [path for path in (files.json, files.html) if path and Path(path).exists()]
        if existing:
            kept = "it was" if len(existing) == 1 else "they were"
            self.unwritten = (f"{', '.join(repr(p) for p in existing)} kept as {kept} (a partial report never "
                              "replaces one)")
        return replace(files, json=None if files.json in existing else files.json,
                       html=None if files.html in existing else files.html)

    def write(self, files) -> None:
        """Write the JSON and HTML reports the user asked for (checked before the run)."""
        if files.json:
            report = {**json_safe(self.to_dict()), SEAL_KEY: seal_placeholder()}
            with staged_output(files.json, files.force, kind=JSON_REPORT, option="--json") as staging:
                staging.write_text(seal(json.dumps(report, indent=2, allow_nan=False) + "\n"), encoding="utf-8")
            self.written.append(files.json)
        if files.html:
            from .html import render

            page = render(self)
            with staged_output(files.html, files.force, kind=HTML_REPORT, option="--html") as staging:
                staging.write_text(seal(page), encoding="utf-8")
            self.written.append(files.html)

    def raise_for_failure(self) -> "BenchReport":
        if self.interrupted:
            written = f"{' and '.join(self.written)} hold{'s' if len(self.written) == 1 else ''} the rows measured " \
                      "before Ctrl-C" if self.written else ""
            said = "; ".join(part for part in (written, self.unwritten) if part)
            raise StoppedByUser(f"interrupted: {said or 'no report file was asked for'}")
        failed = [name for name, p in self.parity.items() if not p.get("passed", True)]
        if failed:
            raise ParityError(f"parity below the thresholds {self.thresholds} for: {', '.join(failed)}")
        # A missed --p99-bound-ms fails the run; under --find-max-qps the bound steers the search instead.
        missed = [r for r in self.results if r.get("bound_held") is False and "max_qps" not in r]
        if missed:
            raise RegressionError(f"the p99 latency bound of {missed[0]['p99_bound_ms']:g} ms was missed by "
                                  + ", ".join(f"{r['variant']} (p99 {r['latency']['p99_ms']:.2f} ms)" for r in missed))
        unreached = [r for r in self.results if "max_qps" in r and not r["max_qps"]]
        if unreached:                  # the search found no rate at all that holds the bound
            raise RegressionError(f"no request rate held the p99 latency bound of {unreached[0]['p99_bound_ms']:g} ms "
                                  f"for {', '.join(r['variant'] for r in unreached)}")
        return self

    # ---------------------------------------------------------------- terminal

    def table(self) -> str:
        lines = []
        header = (f"{'variant':<28} {'scenario':<14} {'params':<24} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
                  f"{'per s':>9} {'speed-up (95% CI)':>22}")
        lines.append(header)
        lines.append("-" * len(header))
        for row in self.with_speedups():
            params = ",".join(f"{k}={v}" for k, v in row["params"].items())
            lat = row["latency"]
            extra = ""
            if "bound_held" in row:
                extra += "  bound " + ("held" if row["bound_held"] else "MISSED")
            if "max_qps" in row:
                extra += f"  max qps {row['max_qps']:.1f}"
            if row.get("speed_of_light"):
                light = row["speed_of_light"]
                extra += f"  {light['fraction']:.0%} of its {light['peak'].upper()} floor ({light['floor_ms']:.2f} ms)"
            if "ttft_ms" in row:
                decode = row.get("decode_tokens_per_s")
                extra += (f"  TTFT p50 {row['ttft_ms']['p50_ms']:.2f} ms, prefill {row['prefill_tokens_per_s']:.0f} tok/s"
                          + (f", decode {decode:.0f} tok/s" if decode else "")
                          + (f", ITL p99 {row['itl_ms']['p99_ms']:.2f} ms" if "itl_ms" in row else ""))
            speedup = row.get("speedup")
            speed = ("1.00x (itself)" if speedup.get("method") == OWN_ROW else
                     f"{speedup['value']:.2f}x ({speedup['ci95'][0]:.2f}-{speedup['ci95'][1]:.2f})") if speedup else "-"
            lines.append(f"{row['variant'][:28]:<28} {row['scenario']:<14} {params[:24]:<24} {lat['p50_ms']:>9.2f} "
                         f"{lat['p90_ms']:>9.2f} {lat['p99_ms']:>9.2f} {row['throughput_per_s']:>9.1f} {speed:>22}"
                         f"{extra}")
        if self.variants:
            lines.append(f"speed-ups against {self.variants[0]['name']} (the first variant); parity against "
                         f"{self.reference}")
        lines.append("")
        lines.append(f"{'variant':<28} {'precision':<13} {'size MB':>8} {'peak RSS MB':>12} {'session ms':>11} "
                     f"{'cold ms':>8}  parity vs reference")
        for info in self.variants:
            name = info["name"]
            size = f"{info['size_bytes'] / 1e6:.1f}" if info.get("size_bytes") else "-"
            rss = f"{info['peak_rss_mb']:.0f}" if info.get("peak_rss_mb") else "-"
            cold = f"{info['cold_start_ms']:.0f}" if info.get("cold_start_ms") else "-"
            lines.append(f"{name[:28]:<28} {info['precision']:<13} {size:>8} {rss:>12} "
                         f"{info['session_create_ms']:>11.0f} {cold:>8}  {parity_text(self.parity.get(name))}")
        domains = sorted({d for p in self.parity.values() for d in p.get("domains", {})})
        if domains:
            lines.append("")
            lines.append(f"{'held-out domains: cosine mean / p1 / min':<42}" + "".join(f"{d:>28}" for d in domains))
            for name, parity in self.parity.items():
                cells = []
                for domain in domains:
                    f = parity.get("domains", {}).get(domain)
                    cells.append(f"{f['mean_cosine']:.4f} / {f['p01_cosine']:.4f} / {f['min_cosine']:.4f}" if f else "-")
                lines.append(f"{name[:42]:<42}" + "".join(f"{c:>28}" for c in cells))
        lines.append(f"\nmachine: {describe(self.machine)}")
        if self.settings:
            wake = wake_phrase(self.machine.get("thread_wakeup"))
            lines.append(f"threads: {self.settings.get('threads')} per variant ({self.settings.get('threads_from')}); "
                         f"spinning {self.settings.get('spinning', '').split(':')[0]}" + (f"; {wake}" if wake else ""))
        state = self.machine_state
        if state.get("measured"):
            noise = f", noise {state['noise']:.0%}" if state.get("noise") is not None else ""
            lines.append(f"machine state: other processes {state['other_cpu_share']:.0%} of the CPUs, steal "
                         f"{state['steal_share']:.0%}, {state['disturbed_rounds']} of {state['rounds']} rounds "
                         f"disturbed{noise}")
        lines.extend(f"WARNING: {warning}" for warning in self.warnings)
        if self.interrupted:
            lines.append("INTERRUPTED: partial results")
        return "\n".join(lines)


def _disturbance_warnings(state: dict, quiet: list[dict], uncertainty: float | None, results: list[dict]
                          ) -> list[str]:
    """What other processes, the hypervisor and an unsteady machine did to the figures
    (``uncertainty``: the widest speed-up interval's half width; None with one variant)."""
    warnings = []
    ratios = f"ratios may be off by about ±{uncertainty:.0%} (the widest 95% interval) and " if uncertainty else ""
    during = state["other_cpu_share"]
    idle = max([q["other_cpu_share"] for q in quiet], default=0.0)      # sampled while the bench waited
    if state["disturbed_rounds"] or max(during, idle) > DISTURBED_SHARE:
        # The figure said to be "during these rounds" is the rounds' own; a busier idle sample is named apart.
        around = f" and {idle:.0%} just before or after them" if round(idle, 2) > round(during, 2) else ""
        warnings.append(
            f"other processes used {during:.0%} of the CPUs during these rounds{around} "
            f"({state['disturbed_rounds']} of {state['rounds']} rounds disturbed); "
            f"{ratios}absolute times {'by more' if ratios else 'may be off'}" + (
                "; speed-ups are from on-CPU time (what each call cost when it ran: preemption stretches long "
                "calls more than short ones), latencies from the wall clock"
                if any("on-CPU" in (r.get("speedup") or {}).get("method", "") for r in results) else ""))
    if state["steal_share"] > DISTURBED_STEAL:
        warnings.append(f"the hypervisor stole {state['steal_share']:.0%} of the CPU time during these rounds;"
                        " absolute times are inflated")
    if not warnings and state["noise"] is not None and state["noise"] > NOISY_SPREAD:
        warnings.append(f"a variant's per-round medians differ by {state['noise']:.0%} (typical): the "
                        "machine was not steady" + (f"; ratios may be off by about ±{uncertainty:.0%}"
                                                    if uncertainty else ""))
    return warnings


def headline_figures(parity: dict) -> dict:
    return parity.get("sentence_embedding") or next(iter(parity.get("outputs", {}).values()), {})


def parity_text(parity: dict | None) -> str:
    if not parity:
        return "-"
    figures = headline_figures(parity)

    def shown(key: str, spec: str) -> str:
        value = figures.get(key)
        return "-" if value is None else format(value, spec)

    text = f"cos mean {shown('mean_cosine', '.5f')} min {shown('min_cosine', '.5f')}, max abs {shown('max_abs_err', '.3g')}"
    if figures.get("top1_agreement") is not None:
        text += f", top-1 {figures['top1_agreement']:.4f}"
    if parity.get("accuracy"):
        text += f", accuracy {parity['accuracy']['top1']:.4f} ({parity['accuracy']['samples']} labelled)"
    return text + ("" if parity.get("passed", True) else "  FAILED")


def load_report(path) -> dict:
    """Read and validate a bench report (either readable schema version)."""
    from ..errors import InvalidOptionError
    from ..schema import problems

    path = Path(path)
    if path.is_dir():
        raise InvalidOptionError(f"'{path}' is a folder, not a bench report")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidOptionError(f"bench report '{path}' does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidOptionError(f"'{path}' is not a JSON bench report: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema_version") not in READABLE_REPORT_VERSIONS:
        raise InvalidOptionError(f"'{path}' is not an edgeport bench report (schema versions "
                                 f"{', '.join(map(str, READABLE_REPORT_VERSIONS))})")
    found = problems(data, REPORT_SCHEMA)
    if found:
        raise InvalidOptionError(f"'{path}' is not a valid edgeport bench report: {'; '.join(found[:4])}")
    return data
