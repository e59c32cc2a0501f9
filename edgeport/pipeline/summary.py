"""The table ``edgeport ship`` ends with: which variants passed their gates, how much faster
and smaller each is than the source model in PyTorch, and where the packages are."""

from __future__ import annotations

from .ship import ShipResult


def _figure(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_summary(result: ShipResult) -> str:
    header = (f"{'variant':<14} {'precision':<17} {'gate':<9} {'mean cos':>9} {'min cos':>9} {'size MB':>8} "
              f"{'of PyTorch':>10} {'p50 ms':>8} {'vs PyTorch':>10}  bundle")
    lines = [header, "-" * len(header)]
    for v in result.variants:
        figures = v.parity.get("sentence_embedding") or next(iter(v.parity.get("outputs", {}).values()), {})
        gate = "regressed" if v.regressed else "passed" if v.passed else "FAILED"
        size = v.size_bytes / 1e6 if v.size_bytes else None
        lines.append(f"{v.name:<14} {v.precision:<17} {gate:<9} {_figure(figures.get('mean_cosine'), '.5f'):>9} "
                     f"{_figure(figures.get('min_cosine'), '.5f'):>9} {_figure(size, '.1f'):>8} "
                     f"{_figure(v.size_vs_pytorch, '.0%'):>10} {_figure(v.p50_ms, '.2f'):>8} "
                     f"{(_figure(v.speedup_vs_pytorch, '.2f') + 'x') if v.speedup_vs_pytorch else '-':>10}  "
                     f"{v.bundle or '-'}")
        for platform, report in v.platforms.items():
            guest = report.get("guest", {})          # what the emulated machine said it ran
            lines.append(f"{'':<14} verified on {platform}: {'passed' if report.get('passed') else 'FAILED'} "
                         f"({report.get('cpu', '?')}, {guest.get('machine', '?')}, onnxruntime "
                         f"{guest.get('onnxruntime', '?')})")
    lines.append("")
    lines.extend(f"WARNING: {warning}" for warning in result.bench_warnings)
    if result.bench_html:
        lines.append(f"report: {result.bench_html} (JSON: {result.bench_json})")
    if result.triton:
        lines.append(f"Triton model repository: {result.triton}")
    lines.append(f"took {result.seconds:.0f} s; summary in {result.output}/ship-summary.json")
    for failure in result.failures:
        lines.append(f"FAILED: {failure}")
    return "\n".join(lines)
