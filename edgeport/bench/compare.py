"""``edgeport bench compare OLD NEW``: match rows by variant, scenario and parameters, print
the deltas, and fail when latency or throughput regresses, or parity drops, beyond the
allowed margins — or when the comparison cannot vouch for anything: a row of the old
report missing from the new one (a renamed variant), or a new report that was
interrupted.  Reports are validated against the report schema first.

The latency gate uses the interval, not the point value: each row's change comes with a
95% interval (from the two reports' per-round medians where they have them, bootstrapped;
else from their medians' own intervals).  A change whose whole interval lies past the
margin is a regression and fails, however noisy the machine was; a point value past the
margin whose interval reaches back inside it is reported as within the noise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import PurePath

from ..errors import InvalidOptionError, RegressionError
from ..speed.wakeup import wake_footing_differs
from .report import headline_figures, load_report

__all__ = ["Comparison", "Delta", "compare", "format_deltas", "load_report", "parse_percent"]


@dataclass
class Delta:
    variant: str
    scenario: str
    params: str
    metric: str
    old: float
    new: float
    change: float          # relative, positive = worse
    regressed: bool
    interval: tuple[float, float] | None = None     # 95% interval of the change (latency and throughput)
    within_noise: bool = False                      # the point is past the margin, the interval is not


@dataclass
class Comparison:
    deltas: list[Delta]
    only_old: list[str]
    only_new: list[str]
    new_interrupted: bool
    max_regression: float
    max_parity_drop: float
    notes: list[str] = field(default_factory=list)     # the two reports' footings differ: read the deltas with that
    failed_parity: list[str] = field(default_factory=list)   # variants whose new parity missed the bench's thresholds
    edited: list[str] = field(default_factory=list)          # reports changed since bench wrote them
    not_measured: list[str] = field(default_factory=list)    # old rows whose figure is no measurement (0)

    def raise_for_failure(self) -> None:
        problems = []
        bad = [d for d in self.deltas if d.regressed]
        if bad:
            details = "; ".join(f"{d.variant} {d.scenario} {d.params} {d.metric} {d.old:.4g} -> {d.new:.4g}" for d in bad)
            problems.append(f"{len(bad)} regression(s) beyond {self.max_regression * 100:g}% latency/throughput or "
                            f"{self.max_parity_drop:g} parity: {details}")
        if self.only_old:
            problems.append(f"{len(self.only_old)} row(s) of the old report have no match in the new one "
                            f"(renamed or dropped variants?): {'; '.join(self.only_old[:3])}")
        if not any(d.scenario != "parity" for d in self.deltas):
            problems.append("no measurement of the new report matches the old one")
        if self.new_interrupted:
            problems.append("the new report was interrupted: its figures are partial")
        if self.failed_parity:
            problems.append(f"the new report's parity missed its thresholds for {', '.join(self.failed_parity)}")
        if self.edited:
            them = "it" if len(self.edited) == 1 else "them"
            problems.append(f"{' and '.join(self.edited)} changed since bench wrote {them} (the seal no longer "
                            "matches): the figures are not what was measured")
        if self.not_measured:
            problems.append(f"the old report's figure is 0, which no measurement gives, for "
                            f"{'; '.join(self.not_measured[:3])}")
        if problems:
            raise RegressionError("; ".join(problems))


def parse_percent(text: str) -> float:
    try:
        text = str(text).strip()
        value = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        raise InvalidOptionError(f"'{text}' is not a percentage (e.g. 5%)") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidOptionError(f"a regression threshold must be a finite percentage >= 0 (got '{text}')")
    if 0 < value < 1 and not text.endswith("%"):     # 0.05 meant as a fraction would allow 0.05%
        raise InvalidOptionError(f"'{text}' has no % sign and would read as {text}%: write '{text}%' if that is "
                                 f"meant, or '{value * 100:g}%' for a fraction of {text}")
    return value / 100.0


def _key(row: dict) -> tuple:
    return (row["variant"], row["scenario"], json.dumps(row["params"], sort_keys=True))


def compare(old: dict, new: dict, max_regression: float, max_parity_drop: float, edited: list[str] = ()
            ) -> Comparison:
    """Deltas for every matched row and parity entry; plus the rows found in only one report.
    ``edited``: the reports (by path) no longer as bench wrote them."""
    if not math.isfinite(max_parity_drop) or max_parity_drop < 0:
        raise InvalidOptionError(f"--max-parity-drop must be a finite number >= 0 (got {max_parity_drop!r})")
    old_rows, new_rows = {_key(r): r for r in old["results"]}, {_key(r): r for r in new["results"]}
    deltas, only_old, only_new, not_measured = [], [], [], []
    for key in sorted(set(old_rows) | set(new_rows)):
        if key not in new_rows:
            only_old.append(f"{key[0]} {key[1]} {key[2]}")
            continue
        if key not in old_rows:
            only_new.append(f"{key[0]} {key[1]} {key[2]}")
            continue
        before, after = old_rows[key], new_rows[key]
        if key[1] == "offline":
            metric, a, b = "throughput_per_s", before["throughput_per_s"], after["throughput_per_s"]
        else:
            metric, a, b = "p50_ms", before["latency"]["p50_ms"], after["latency"]["p50_ms"]
        if a <= 0:
            not_measured.append(f"{key[0]} {key[1]} {key[2]} {metric}")
            continue
        change = (a - b) / a if metric == "throughput_per_s" else (b - a) / a
        interval = slowdown_interval(before, after)
        if interval is not None and metric != "p50_ms":
            # The latency's uncertainty carried over as a ratio: throughput is its inverse, so the
            # loss interval is 1 - (b/a) * r_median / r for r across the latency ratio's interval
            # (a 10x slower batch loses 90%, never more than 100%).
            spread = (b / a) * after["latency"]["p50_ms"] / before["latency"]["p50_ms"]
            interval = (1 - spread / (1 + interval[0]), 1 - spread / (1 + interval[1]))
        real = change > max_regression and (interval is None or interval[0] > max_regression)
        deltas.append(Delta(key[0], key[1], key[2], metric, a, b, change, real, interval,
                            within_noise=change > max_regression and not real))
    old_parity, new_parity = old.get("parity") or {}, new.get("parity") or {}
    for variant in sorted(old_parity):
        if variant not in new_parity:
            only_old.append(f"{variant} parity")
            continue
        for params, metric, a, b in _parity_figures(old_parity[variant], new_parity[variant]):
            deltas.append(Delta(variant, "parity", params, metric, a, b, a - b, (a - b) > max_parity_drop))
    failed = sorted(variant for variant, figures in new_parity.items()
                    if isinstance(figures, dict) and figures.get("passed") is False)
    return Comparison(deltas, only_old, only_new, bool(new.get("interrupted")), max_regression, max_parity_drop,
                      footing_notes(old, new), failed, list(edited), not_measured)


def _parity_figures(old: dict, new: dict) -> list[tuple[str, str, float, float]]:
    """(params, metric, old, new) for every faithfulness figure both reports hold for a variant:
    cosine and top-1 agreement against the reference, accuracy on labels, each held-out domain."""
    pairs = [("", metric, headline_figures(old).get(metric), headline_figures(new).get(metric))
             for metric in ("min_cosine", "top1_agreement")]
    accuracy = [(report.get("accuracy") or {}).get("top1") for report in (old, new)]
    pairs.append(("labels", "accuracy", *accuracy))
    old_domains, new_domains = old.get("domains") or {}, new.get("domains") or {}
    pairs += [(f"domain {d}", "min_cosine", old_domains[d].get("min_cosine"), new_domains[d].get("min_cosine"))
              for d in sorted(set(old_domains) & set(new_domains))]
    return [(params, metric, a, b) for params, metric, a, b in pairs if a is not None and b is not None]


def footing_notes(old: dict, new: dict) -> list[str]:
    """What differs between the two reports' footings that moves latencies by itself: the
    CPU, the threads, spinning, how long a sleeping thread takes to wake, the data."""
    notes = []
    old_machine, new_machine = old.get("machine") or {}, new.get("machine") or {}
    if old_machine.get("cpu") != new_machine.get("cpu"):
        notes.append(f"the reports come from different CPUs ({old_machine.get('cpu')} / {new_machine.get('cpu')})")
    old_settings, new_settings = old.get("settings") or {}, new.get("settings") or {}
    for key in ("threads", "spinning"):
        if old_settings.get(key) is None or new_settings.get(key) is None:
            continue
        a, b = (str(settings[key]).split(":")[0] for settings in (old_settings, new_settings))
        if a != b:
            notes.append(f"different {key}: {a} in the old report, {b} in the new")
    if old.get("data") and new.get("data") and old["data"] != new["data"]:
        notes.append(f"the reports measured different data ('{old['data']}' / '{new['data']}'): latencies follow "
                     "the inputs' lengths")
    # By folder name, as variants are matched: the same artifact given by another path is the same reference.
    references = [PurePath(str(report.get("reference") or "")).name for report in (old, new)]
    if all(references) and references[0] != references[1]:
        notes.append(f"the reports measured parity and speed-ups against different references ('{references[0]}' "
                     f"/ '{references[1]}'): their parity and speed-up deltas compare different things")
    wake = wake_footing_differs(old_machine.get("thread_wakeup"), new_machine.get("thread_wakeup"))
    return notes + ([wake] if wake else [])


def slowdown_interval(before: dict, after: dict, iterations: int = 2000) -> tuple[float, float] | None:
    """95% interval of after's latency over before's, minus 1 (positive = slower): bootstrapped
    from both rows' per-round medians when each has three or more, else from their medians'
    intervals; None when neither is recorded."""
    import numpy as np

    old, new = before.get("rounds_ms") or [], after.get("rounds_ms") or []
    if len(old) >= 3 and len(new) >= 3:
        rng = np.random.default_rng(0)
        old, new = np.asarray(old, float), np.asarray(new, float)
        ratios = (np.median(new[rng.integers(0, len(new), (iterations, len(new)))], axis=1)
                  / np.median(old[rng.integers(0, len(old), (iterations, len(old)))], axis=1))
        low, high = np.percentile(ratios, [2.5, 97.5])
        return float(low - 1), float(high - 1)
    old_ci, new_ci = before["latency"].get("median_ci95_ms"), after["latency"].get("median_ci95_ms")
    if not old_ci or not new_ci or min(old_ci) <= 0:
        return None
    return new_ci[0] / old_ci[1] - 1, new_ci[1] / old_ci[0] - 1


def _parity_change(drop: float) -> str:
    text = f"{-drop:+.5f}"
    return "+0.00000" if text == "-0.00000" else text      # a drop of 3e-7 read as a loss


def format_deltas(comparison: Comparison) -> str:
    lines = [f"{'variant':<26} {'scenario':<14} {'params':<26} {'metric':<16} {'old':>10} {'new':>10} {'change':>9} "
             f"{'95% interval':>17}"]
    for d in comparison.deltas:
        change = f"{d.change * 100:+.1f}%" if d.scenario != "parity" else _parity_change(d.change)
        interval = f"{d.interval[0] * 100:+.1f}..{d.interval[1] * 100:+.1f}%" if d.interval else "-"
        verdict = "  REGRESSION" if d.regressed else "  within the noise" if d.within_noise else ""
        lines.append(f"{d.variant[:26]:<26} {d.scenario:<14} {d.params[:26]:<26} {d.metric:<16} {d.old:>10.4g} "
                     f"{d.new:>10.4g} {change:>9} {interval:>17}{verdict}")
    lines.extend(f"unmatched: {u} only in the old report" for u in comparison.only_old)
    lines.extend(f"unmatched: {u} only in the new report" for u in comparison.only_new)
    if comparison.new_interrupted:
        lines.append("the new report was INTERRUPTED")
    lines.extend(f"EDITED since bench wrote it: {path}" for path in comparison.edited)
    lines.extend(f"parity FAILED its thresholds in the new report: {v}" for v in comparison.failed_parity)
    lines.extend(f"note: {note}" for note in comparison.notes)
    return "\n".join(lines)
