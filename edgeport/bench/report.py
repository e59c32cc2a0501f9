"""``BenchReport``: the results of one bench run, as JSON (versioned schema), a terminal
table, and a self-contained HTML page with inline SVG plots (no network, no scripts)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParityError

REPORT_SCHEMA_VERSION = 1

_STATS = {"type": "object", "required": ["count", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms", "median_ci95_ms"],
          "properties": {"count": {"type": "integer", "minimum": 1},
                         "median_ci95_ms": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}}
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edgeport bench report",
    "type": "object",
    "required": ["schema_version", "created", "machine", "variants", "results", "parity", "reference", "interrupted"],
    "properties": {
        "schema_version": {"const": REPORT_SCHEMA_VERSION},
        "created": {"type": "string"},
        "machine": {"type": "object", "required": ["cpu", "cores", "versions"]},
        "variants": {"type": "array", "items": {
            "type": "object", "required": ["name", "kind", "precision", "provider", "session_create_ms"],
            "properties": {"kind": {"enum": ["onnx", "torch"]}}}},
        "results": {"type": "array", "items": {
            "type": "object", "required": ["variant", "scenario", "params", "latency", "throughput_per_s"],
            "properties": {"scenario": {"enum": ["single-stream", "offline", "server", "sweep"]},
                           "latency": _STATS, "throughput_per_s": {"type": "number", "minimum": 0}}}},
        "parity": {"type": "object"},
        "reference": {"type": "string"},
        "interrupted": {"type": "boolean"},
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

    def to_dict(self) -> dict:
        return {"schema_version": REPORT_SCHEMA_VERSION, "created": self.created, "machine": self.machine,
                "reference": self.reference, "data": self.data, "thresholds": self.thresholds,
                "interrupted": self.interrupted, "variants": self.variants, "results": self.results,
                "parity": self.parity}

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def raise_for_failure(self) -> "BenchReport":
        failed = [name for name, p in self.parity.items() if not p.get("passed", True)]
        if failed:
            raise ParityError(f"parity below the thresholds {self.thresholds} for: {', '.join(failed)}")
        return self

    # ---------------------------------------------------------------- terminal

    def table(self) -> str:
        lines = []
        by_name = {v["name"]: v for v in self.variants}
        header = f"{'variant':<28} {'scenario':<14} {'params':<24} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'per s':>9}"
        lines.append(header)
        lines.append("-" * len(header))
        for row in self.results:
            params = ",".join(f"{k}={v}" for k, v in row["params"].items())
            lat = row["latency"]
            extra = ""
            if "bound_held" in row:
                extra += "  bound " + ("held" if row["bound_held"] else "MISSED")
            if "max_qps" in row:
                extra += f"  max qps {row['max_qps']:.1f}"
            lines.append(f"{row['variant'][:28]:<28} {row['scenario']:<14} {params[:24]:<24} {lat['p50_ms']:>9.2f} "
                         f"{lat['p90_ms']:>9.2f} {lat['p99_ms']:>9.2f} {row['throughput_per_s']:>9.1f}{extra}")
        lines.append("")
        lines.append(f"{'variant':<28} {'precision':<13} {'size MB':>8} {'peak RSS MB':>12} {'session ms':>11} "
                     f"{'cold ms':>8}  parity vs reference")
        for name, info in by_name.items():
            size = f"{info['size_bytes'] / 1e6:.1f}" if info.get("size_bytes") else "-"
            rss = f"{info['peak_rss_mb']:.0f}" if info.get("peak_rss_mb") else "-"
            cold = f"{info['cold_start_ms']:.0f}" if info.get("cold_start_ms") else "-"
            lines.append(f"{name[:28]:<28} {info['precision']:<13} {size:>8} {rss:>12} {info['session_create_ms']:>11.0f} "
                         f"{cold:>8}  {_parity_text(self.parity.get(name))}")
        lines.append(f"\nmachine: {self.machine.get('cpu')}, {self.machine.get('cores')} cores, "
                     f"flags {' '.join(self.machine.get('cpu_flags', []))}")
        if self.interrupted:
            lines.append("INTERRUPTED: partial results")
        return "\n".join(lines)

    # ---------------------------------------------------------------- HTML

    def write_html(self, path: str | Path) -> None:
        Path(path).write_text(self.html(), encoding="utf-8")

    def html(self) -> str:
        names = [v["name"] for v in self.variants]
        sections = []
        single = {r["variant"]: r["latency"] for r in self.results if r["scenario"] == "single-stream"}
        if single:
            sections.append(("Latency distribution (single-stream, batch 1)", _box_plot(single, names)))
        offline = _series(self.results, "offline", "batch", "throughput_per_s")
        if offline:
            sections.append(("Throughput against batch size (offline)", _line_chart(offline, "batch size", "samples / s")))
        sweep = _series([r for r in self.results if r["params"].get("batch") == 1], "sweep", "sequence", None)
        if sweep:
            sections.append(("Latency against sequence length (batch 1)", _line_chart(sweep, "sequence length", "p50 ms")))
        if self.parity:
            sections.append(("Parity against the reference", _parity_bars(self.parity, names)))
        body = "\n".join(f"<section><h2>{html.escape(title)}</h2>{svg}</section>" for title, svg in sections)
        table = html.escape(self.table())
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edgeport bench report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}h1{{font-size:1.4rem}}
h2{{font-size:1.1rem;margin-top:2rem}}pre{{background:#f6f6f6;padding:1rem;overflow-x:auto;font-size:12px}}
svg text{{font-size:11px;font-family:system-ui,sans-serif}}</style></head>
<body><h1>edgeport bench report</h1>
<p>{html.escape(self.created)} · {html.escape(str(self.machine.get('cpu')))} · {self.machine.get('cores')} cores ·
reference {html.escape(self.reference)} · data: {html.escape(self.data)}</p>
{body}
<h2>All figures</h2><pre>{table}</pre>
</body></html>
"""


def _parity_text(parity: dict | None) -> str:
    if not parity:
        return "-"
    figures = parity.get("sentence_embedding") or next(iter(parity["outputs"].values()))
    text = f"cos mean {figures['mean_cosine']:.5f} min {figures['min_cosine']:.5f}, max abs {figures['max_abs_err']:.3g}"
    if "top1_agreement" in figures:
        text += f", top-1 {figures['top1_agreement']:.4f}"
    return text + ("" if parity.get("passed", True) else "  FAILED")


def _series(results, scenario, x_key, y_key) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list] = {}
    for row in results:
        if row["scenario"] != scenario or x_key not in row["params"]:
            continue
        y = row[y_key] if y_key else row["latency"]["p50_ms"]
        series.setdefault(row["variant"], []).append((row["params"][x_key], y))
    return {k: sorted(v) for k, v in series.items()}


COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, LEFT, BOTTOM = 640, 300, 70, 40


def _scale(value, low, high, size):
    return 0 if high == low else (value - low) / (high - low) * size


def _axes(x_label: str, y_label: str, y_max: float, y_min: float = 0.0) -> list[str]:
    plot_h = HEIGHT - BOTTOM - 10
    parts = [f'<line x1="{LEFT}" y1="10" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
             f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - 10}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
             f'<text x="{(LEFT + WIDTH) / 2}" y="{HEIGHT - 5}" text-anchor="middle">{html.escape(x_label)}</text>',
             f'<text x="12" y="{HEIGHT / 2}" transform="rotate(-90 12 {HEIGHT / 2})" text-anchor="middle">{html.escape(y_label)}</text>']
    for i in range(5):
        value = y_min + (y_max - y_min) * i / 4
        y = HEIGHT - BOTTOM - plot_h * i / 4
        parts.append(f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" stroke="#eee"/>')
    return parts


def _legend(names) -> list[str]:
    return [f'<rect x="{LEFT + 10 + i * 150}" y="{HEIGHT + 8}" width="10" height="10" fill="{COLORS[i % len(COLORS)]}"/>'
            f'<text x="{LEFT + 24 + i * 150}" y="{HEIGHT + 17}">{html.escape(n[:20])}</text>' for i, n in enumerate(names)]


def _svg(parts: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{html.escape(label)}" '
            f'width="{WIDTH}" height="{HEIGHT + 30}" viewBox="0 0 {WIDTH} {HEIGHT + 30}">' + "".join(parts) + "</svg>")


def _line_chart(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str) -> str:
    xs = sorted({x for points in series.values() for x, _ in points})
    y_max = max(y for points in series.values() for _, y in points) * 1.1 or 1.0
    plot_w, plot_h = WIDTH - LEFT - 20, HEIGHT - BOTTOM - 10
    position = {x: LEFT + 10 + (plot_w - 20) * (i / max(1, len(xs) - 1)) for i, x in enumerate(xs)}
    parts = _axes(x_label, y_label, y_max)
    for x in xs:
        parts.append(f'<text x="{position[x]:.1f}" y="{HEIGHT - BOTTOM + 15}" text-anchor="middle">{x}</text>')
    for i, (name, points) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = [(position[x], HEIGHT - BOTTOM - _scale(y, 0, y_max, plot_h)) for x, y in points]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in coords) + '"/>')
        parts.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in coords)
    return _svg(parts + _legend(list(series)), f"{y_label} against {x_label}")


def _box_plot(latencies: dict[str, dict], names: list[str]) -> str:
    """Per variant: whisker min..p99, box p50..p90, tick at the median, dot at the max."""
    shown = [n for n in names if n in latencies]
    top = max(latencies[n]["max_ms"] for n in shown) * 1.05
    plot_h = HEIGHT - BOTTOM - 10
    parts = _axes("variant", "latency (ms)", top)
    step = (WIDTH - LEFT - 20) / max(1, len(shown))

    def y(value):
        return HEIGHT - BOTTOM - _scale(value, 0, top, plot_h)

    for i, name in enumerate(shown):
        stats, color = latencies[name], COLORS[i % len(COLORS)]
        cx = LEFT + step * (i + 0.5)
        parts.append(f'<line x1="{cx:.1f}" y1="{y(stats["min_ms"]):.1f}" x2="{cx:.1f}" y2="{y(stats["p99_ms"]):.1f}" stroke="{color}"/>')
        parts.append(f'<rect x="{cx - 15:.1f}" y="{y(stats["p90_ms"]):.1f}" width="30" '
                     f'height="{max(1.0, y(stats["p50_ms"]) - y(stats["p90_ms"])):.1f}" fill="{color}" opacity="0.6"/>')
        parts.append(f'<line x1="{cx - 18:.1f}" y1="{y(stats["p50_ms"]):.1f}" x2="{cx + 18:.1f}" y2="{y(stats["p50_ms"]):.1f}" stroke="#000"/>')
        parts.append(f'<circle cx="{cx:.1f}" cy="{y(stats["max_ms"]):.1f}" r="2" fill="{color}"/>')
        parts.append(f'<text x="{cx:.1f}" y="{HEIGHT - BOTTOM + 15}" text-anchor="middle">{html.escape(name[:18])}</text>')
    return _svg(parts, "latency distribution per variant")


def _parity_bars(parity: dict[str, dict], names: list[str]) -> str:
    values = {}
    for name in names:
        if name in parity:
            figures = parity[name].get("sentence_embedding") or next(iter(parity[name]["outputs"].values()))
            values[name] = figures.get("top1_agreement", figures["min_cosine"])
    low = min(min(values.values()) - 0.001, 0.99)
    plot_h = HEIGHT - BOTTOM - 10
    parts = _axes("variant", "min cosine / top-1 agreement", 1.0, low)
    step = (WIDTH - LEFT - 20) / max(1, len(values))
    for i, (name, value) in enumerate(values.items()):
        height = _scale(value, low, 1.0, plot_h)
        x = LEFT + step * i + step * 0.2
        parts.append(f'<rect x="{x:.1f}" y="{HEIGHT - BOTTOM - height:.1f}" width="{step * 0.6:.1f}" height="{height:.1f}" '
                     f'fill="{COLORS[i % len(COLORS)]}"/>')
        parts.append(f'<text x="{x + step * 0.3:.1f}" y="{HEIGHT - BOTTOM - height - 4:.1f}" text-anchor="middle">{value:.5f}</text>')
        parts.append(f'<text x="{x + step * 0.3:.1f}" y="{HEIGHT - BOTTOM + 15}" text-anchor="middle">{html.escape(name[:18])}</text>')
    return _svg(parts, "parity per variant")
