"""The bench report as one self-contained HTML page: plots drawn by matplotlib (SVG, inline;
no pyplot, so no process-wide backend is switched) and every figure in a real HTML table.

Honest pictures: lengths that encode a quantity start at zero; quantities near one
(cosine, speed-up) are dot plots, whose position rather than length carries the value;
ticks are matplotlib's round ones.  Needs the ``report`` extra (matplotlib).
"""

from __future__ import annotations

import html
import io
import json

from ..errors import require
from ..outputs import SEAL_KEY, seal_placeholder
from ..speed import describe
from ..speed.rounds import OWN_ROW
from ..speed.wakeup import wake_phrase
from .report import BenchReport, headline_figures

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _figure(width: float = 7.0, height: float = 3.2):
    require("matplotlib", "report")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _svg(figure, label: str) -> str:
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    buffer = io.StringIO()
    FigureCanvasSVG(figure).print_svg(buffer, metadata={"Date": None})
    text = buffer.getvalue()
    svg = text[text.index("<svg"):]
    return svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(label)}" ', 1)


def _color(names: list[str], name: str) -> str:
    return COLORS[names.index(name) % len(COLORS)] if name in names else "#444"


def latency_plot(report: BenchReport, names: list[str]) -> str | None:
    """Single-stream latency per variant: a bar from zero to the median, the median's 95%
    interval, and dots at p90 and p99."""
    rows = [r for r in report.results if r["scenario"] == "single-stream"]
    if not rows:
        return None
    figure, axes = _figure(7.0, 0.6 + 0.5 * len(rows))
    for index, row in enumerate(rows):
        lat, color = row["latency"], _color(names, row["variant"])
        low, high = lat["median_ci95_ms"]
        axes.barh(index, lat["p50_ms"], color=color, alpha=0.7, height=0.55)
        axes.errorbar(lat["p50_ms"], index, xerr=[[lat["p50_ms"] - low], [high - lat["p50_ms"]]], fmt="none",
                      ecolor="black", capsize=3)
        axes.plot([lat["p90_ms"]], [index], "o", color=color, markeredgecolor="black", label="p90" if not index else None)
        axes.plot([lat["p99_ms"]], [index], "^", color=color, markeredgecolor="black", label="p99" if not index else None)
    axes.set_yticks(range(len(rows)), [r["variant"] for r in rows])
    axes.invert_yaxis()
    axes.set_xlim(left=0)
    axes.set_xlabel("latency (ms): bar = median with 95% interval; o = p90, ^ = p99")
    axes.margins(y=0.15)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _svg(figure, "single-stream latency per variant")


def line_plot(report: BenchReport, names: list[str], scenario: str, x_key: str, y_label: str, label: str,
              throughput: bool) -> str | None:
    series: dict[str, list] = {}
    for row in report.results:
        if row["scenario"] != scenario or x_key not in row["params"]:
            continue
        if scenario == "sweep" and row["params"].get("batch") != 1:
            continue
        y = row["throughput_per_s"] if throughput else row["latency"]["p50_ms"]
        series.setdefault(row["variant"], []).append((row["params"][x_key], y))
    if not series:
        return None
    figure, axes = _figure()
    for name, points in series.items():
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], "o-", color=_color(names, name), label=name)
    axes.set_ylim(bottom=0)
    axes.set_xscale("log", base=2)
    xs = sorted({p[0] for pts in series.values() for p in pts})
    axes.set_xticks(xs, [str(x) for x in xs])
    axes.set_xlabel(x_key)
    axes.set_ylabel(y_label)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _svg(figure, label)


def speedup_plot(report: BenchReport, names: list[str]) -> str | None:
    rows = [r for r in report.with_speedups() if r["scenario"] == "single-stream" and "speedup" in r]
    if len(rows) < 2:
        return None
    figure, axes = _figure(7.0, 0.6 + 0.5 * len(rows))
    for index, row in enumerate(rows):
        value, (low, high) = row["speedup"]["value"], row["speedup"]["ci95"]
        axes.errorbar(value, index, xerr=[[value - low], [high - value]], fmt="o", color=_color(names, row["variant"]),
                      ecolor="black", capsize=3)
    axes.axvline(1.0, color="#888", linewidth=1)
    axes.set_yticks(range(len(rows)), [r["variant"] for r in rows])
    axes.invert_yaxis()
    axes.margins(y=0.25)
    axes.set_xlim(left=0)
    axes.set_xlabel(f"speed-up against {names[0]} (median latency ratio, 95% interval)")
    return _svg(figure, "speed-up per variant")


def generation_plot(report: BenchReport, names: list[str]) -> str | None:
    """Causal LMs: decode tokens per second and time to first token per variant, bars from zero."""
    rows = [r for r in report.results if r["scenario"] == "generation"]
    if not rows:
        return None
    figure = _figure(7.0, 0.8 + 0.5 * len(rows))[0]
    figure.clear()
    left, right = figure.subplots(1, 2, sharey=True)
    labels = [r["variant"] for r in rows]
    colors = [_color(names, label) for label in labels]
    left.barh(range(len(rows)), [r.get("decode_tokens_per_s") or 0 for r in rows], color=colors, alpha=0.8)
    left.set_xlabel("decode tokens / s")
    right.barh(range(len(rows)), [r["ttft_ms"]["p50_ms"] for r in rows], color=colors, alpha=0.8)
    right.set_xlabel("time to first token, p50 (ms)")
    left.set_yticks(range(len(rows)), labels)
    left.invert_yaxis()
    for axes in (left, right):
        axes.set_xlim(left=0)
    return _svg(figure, "generation speed per variant")


def parity_plot(report: BenchReport, names: list[str]) -> str | None:
    """Mean and min cosine (or top-1 agreement) per variant as dots: a dot's position, not a
    bar's length, carries the value, so the axis can show the small differences honestly."""
    values = {}
    for name in names:
        if name in report.parity:
            figures = headline_figures(report.parity[name])
            if figures.get("min_cosine") is not None:
                values[name] = figures
    if not values:
        return None
    figure, axes = _figure(7.0, 0.6 + 0.5 * len(values))
    for index, (name, figures) in enumerate(values.items()):
        color = _color(names, name)
        axes.plot([figures["min_cosine"]], [index], "o", color=color, markeredgecolor="black",
                  label="min cosine" if not index else None)
        axes.plot([figures["mean_cosine"]], [index], "D", color="white", markeredgecolor=color,
                  label="mean cosine" if not index else None)
    axes.set_yticks(range(len(values)), list(values))
    axes.invert_yaxis()
    axes.margins(x=0.08, y=0.25)
    axes.ticklabel_format(axis="x", useOffset=False)
    axes.set_xlabel("cosine similarity to the reference (1 = identical)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _svg(figure, "parity per variant")


def _cell(value, digits: int) -> str:
    if value is None:
        return "<td>-</td>"
    return f'<td data-value="{value!r}">{value:.{digits}f}</td>'


def results_table(report: BenchReport) -> str:
    head = ("<tr><th>variant</th><th>scenario</th><th>params</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
            "<th>throughput /s</th><th>speed-up</th><th>speed-up 95% CI</th></tr>")
    body = []
    for row in report.with_speedups():
        lat, speedup = row["latency"], row.get("speedup")
        own = speedup is not None and speedup.get("method") == OWN_ROW
        ci = "itself" if own else f"{speedup['ci95'][0]:.2f} - {speedup['ci95'][1]:.2f}" if speedup else "-"
        body.append("<tr>" + f"<td>{html.escape(row['variant'])}</td><td>{html.escape(row['scenario'])}</td>"
                    f"<td>{html.escape(json.dumps(row['params']))}</td>" + _cell(lat["p50_ms"], 3) +
                    _cell(lat["p90_ms"], 3) + _cell(lat["p99_ms"], 3) + _cell(row["throughput_per_s"], 1) +
                    _cell(speedup["value"] if speedup else None, 2) + f"<td>{ci}</td></tr>")
    return f'<table id="results">{head}{"".join(body)}</table>'


def variants_table(report: BenchReport) -> str:
    head = ("<tr><th>variant</th><th>precision</th><th>provider</th><th>size MB</th><th>peak RSS MB</th>"
            "<th>session ms</th><th>cold start ms</th><th>mean cosine</th><th>min cosine</th><th>parity</th></tr>")
    body = []
    for info in report.variants:
        parity = report.parity.get(info["name"], {})
        figures = headline_figures(parity) if parity else {}
        size = info["size_bytes"] / 1e6 if info.get("size_bytes") else None
        passed = "-" if not parity else ("passed" if parity.get("passed") else "FAILED")
        generation = parity.get("generation") if parity else None
        if generation:
            increase = generation.get("perplexity_increase")
            passed += (f" · tokens {generation['token_agreement']:.1%} predicted, {generation['exact']:.0%} of prompts "
                       "identical" + (f", perplexity {increase:+.1%}" if increase is not None else ""))
        accuracy = parity.get("accuracy") if parity else None
        if accuracy:
            passed += f" · accuracy {accuracy['top1']:.2%} on {accuracy['samples']} labelled examples"
        body.append("<tr>" + f"<td>{html.escape(info['name'])}</td><td>{html.escape(info['precision'])}</td>"
                    f"<td>{html.escape(str(info['provider']))}</td>" + _cell(size, 1) +
                    _cell(info.get("peak_rss_mb"), 1) + _cell(info.get("session_create_ms"), 1) +
                    _cell(info.get("cold_start_ms"), 1) + _cell(figures.get("mean_cosine"), 5) +
                    _cell(figures.get("min_cosine"), 5) + f"<td>{passed}</td></tr>")
    return f'<table id="variants">{head}{"".join(body)}</table>'


def domains_table(report: BenchReport) -> str:
    """Worst-case parity per held-out text domain, when the bench measured it."""
    domains = sorted({d for p in report.parity.values() for d in p.get("domains", {})})
    if not domains:
        return ""
    head = "<tr><th>variant</th>" + "".join(f"<th>{html.escape(d)}: mean</th><th>p1</th><th>min</th>" for d in domains) \
        + "</tr>"
    rows = []
    for name, parity in report.parity.items():
        cells = []
        for domain in domains:
            figures = parity.get("domains", {}).get(domain, {})
            cells += [_cell(figures.get(k), 5) for k in ("mean_cosine", "p01_cosine", "min_cosine")]
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return f'<h2>Parity on held-out text domains</h2><table id="domains">{head}{"".join(rows)}</table>'


def machine_paragraph(report: BenchReport) -> str:
    """Threads, spinning and the machine's state while measuring, in one paragraph."""
    parts = []
    if report.settings.get("threads"):
        parts.append(f"{report.settings['threads']} threads per variant ({report.settings.get('threads_from')})")
    if report.settings.get("spinning"):
        parts.append(f"spinning {report.settings['spinning']}")
    wake = wake_phrase(report.machine.get("thread_wakeup"))
    if wake:
        parts.append(wake)
    state = report.machine_state
    if state.get("measured"):
        noise = f"; noise (spread of a variant's round medians) {state['noise']:.0%}" if state.get("noise") else ""
        parts.append(f"other processes used {state['other_cpu_share']:.0%} of the CPUs and the hypervisor stole "
                     f"{state['steal_share']:.0%}; {state['disturbed_rounds']} of {state['rounds']} rounds "
                     f"disturbed{noise}")
    return f"<p>{html.escape('; '.join(parts))}</p>" if parts else ""


def render(report: BenchReport) -> str:
    names = [v["name"] for v in report.variants]
    matplotlib = require("matplotlib", "report")
    with matplotlib.rc_context({"text.parse_math": False}):     # a '$' in a variant's name is not TeX
        plots = [
            ("Latency (single-stream, batch 1)", latency_plot(report, names)),
            (f"Speed-up against {names[0] if names else 'the first variant'} (the first variant)",
             speedup_plot(report, names)),
            ("Throughput against batch size (offline)",
             line_plot(report, names, "offline", "batch", "samples / s", "throughput against batch size", True)),
            ("Latency against sequence length (batch 1)",
             line_plot(report, names, "sweep", "sequence", "p50 latency (ms)", "latency against sequence length",
                       False)),
            ("Generation (causal LMs)", generation_plot(report, names)),
            ("Parity against the reference", parity_plot(report, names)),
        ]
    sections = "\n".join(f'<section class="plot"><h2>{html.escape(title)}</h2>{svg}</section>'
                         for title, svg in plots if svg)
    machine = report.machine
    status = '<p class="warning">INTERRUPTED: partial results</p>' if report.interrupted else ""
    status += "".join(f'<p class="warning">{html.escape(w)}</p>' for w in report.warnings)
    status += machine_paragraph(report)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edgeport bench report</title>
<meta name="{SEAL_KEY}" content="{seal_placeholder()}">
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}}h1{{font-size:1.4rem}}
h2{{font-size:1.1rem;margin-top:2rem}}table{{border-collapse:collapse;font-size:13px;margin:1rem 0}}
th,td{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}
td:first-child,th:first-child{{text-align:left}}.warning{{color:#b00;font-weight:bold}}svg{{max-width:100%;height:auto}}
</style></head>
<body><h1>edgeport bench report</h1>
<p>{html.escape(report.created)} · {html.escape(describe(machine))} ·
parity reference {html.escape(report.reference)} · data: {html.escape(report.data)}</p>
{status}
{sections}
<h2>Variants</h2>
{variants_table(report)}
{domains_table(report)}
<h2>All figures</h2>
{results_table(report)}
</body></html>
"""
