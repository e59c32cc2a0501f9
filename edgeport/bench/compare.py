"""``edgeport bench compare OLD NEW``: match rows by variant, scenario and parameters, print
the deltas, and fail when latency or throughput regresses, or parity drops, beyond the
allowed margins."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidOptionError, RegressionError
from .report import REPORT_SCHEMA_VERSION


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


def load_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidOptionError(f"bench report '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidOptionError(f"'{path}' is not a JSON bench report: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema_version") != REPORT_SCHEMA_VERSION or "results" not in data:
        raise InvalidOptionError(f"'{path}' is not an edgeport bench report (schema version {REPORT_SCHEMA_VERSION})")
    return data


def parse_percent(text: str) -> float:
    try:
        value = float(str(text).strip().rstrip("%"))
    except ValueError:
        raise InvalidOptionError(f"'{text}' is not a percentage (e.g. 5%)") from None
    if value < 0:
        raise InvalidOptionError("a regression threshold must be >= 0")
    return value / 100.0


def _key(row: dict) -> tuple:
    return (row["variant"], row["scenario"], json.dumps(row["params"], sort_keys=True))


def compare(old: dict, new: dict, max_regression: float, max_parity_drop: float) -> tuple[list[Delta], list[str]]:
    """Deltas for every matched row and parity entry; plus the rows found in only one report."""
    old_rows, new_rows = {_key(r): r for r in old["results"]}, {_key(r): r for r in new["results"]}
    deltas, unmatched = [], []
    for key in sorted(set(old_rows) | set(new_rows)):
        if key not in old_rows or key not in new_rows:
            unmatched.append(f"{key[0]} {key[1]} {key[2]} only in the {'new' if key in new_rows else 'old'} report")
            continue
        before, after = old_rows[key], new_rows[key]
        if key[1] == "offline":
            metric, a, b = "throughput_per_s", before["throughput_per_s"], after["throughput_per_s"]
            change = (a - b) / a if a else 0.0
        else:
            metric, a, b = "p50_ms", before["latency"]["p50_ms"], after["latency"]["p50_ms"]
            change = (b - a) / a if a else 0.0
        deltas.append(Delta(key[0], key[1], key[2], metric, a, b, change, change > max_regression))
    for variant in sorted(set(old.get("parity", {})) & set(new.get("parity", {}))):
        for metric in ("min_cosine", "top1_agreement"):
            a, b = _parity_figure(old["parity"][variant], metric), _parity_figure(new["parity"][variant], metric)
            if a is None or b is None:
                continue
            deltas.append(Delta(variant, "parity", "", metric, a, b, a - b, (a - b) > max_parity_drop))
    return deltas, unmatched


def _parity_figure(parity: dict, metric: str) -> float | None:
    figures = parity.get("sentence_embedding") or next(iter(parity.get("outputs", {}).values()), {})
    return figures.get(metric)


def format_deltas(deltas: list[Delta], unmatched: list[str]) -> str:
    lines = [f"{'variant':<26} {'scenario':<14} {'params':<26} {'metric':<16} {'old':>10} {'new':>10} {'change':>9}"]
    for d in deltas:
        change = f"{d.change * 100:+.1f}%" if d.scenario != "parity" else f"{-d.change:+.5f}"
        lines.append(f"{d.variant[:26]:<26} {d.scenario:<14} {d.params[:26]:<26} {d.metric:<16} {d.old:>10.4g} "
                     f"{d.new:>10.4g} {change:>9}{'  REGRESSION' if d.regressed else ''}")
    lines.extend(f"unmatched: {u}" for u in unmatched)
    return "\n".join(lines)


def raise_for_regressions(deltas: list[Delta], max_regression: float, max_parity_drop: float) -> None:
    bad = [d for d in deltas if d.regressed]
    if bad:
        details = "; ".join(f"{d.variant} {d.scenario} {d.params} {d.metric} {d.old:.4g} -> {d.new:.4g}" for d in bad)
        raise RegressionError(f"{len(bad)} regression(s) beyond {max_regression * 100:g}% latency/throughput or "
                              f"{max_parity_drop:g} parity: {details}")
