"""``edgeport bench A B ...`` and ``edgeport bench compare OLD NEW``."""

from __future__ import annotations

import click

from .. import vocabulary as v
from ..errors import InvalidOptionError
from . import main
from .common import TerminalMeter, options_given, say


class BenchGroup(click.Group):
    """``edgeport bench A B ...`` runs a benchmark; ``edgeport bench compare OLD NEW`` compares."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=BenchGroup)
def bench() -> None:
    """Benchmark artifacts side by side (edgeport bench A B ...), or compare two reports."""


def _numbers(text: str, name: str) -> list[int]:
    """Comma-separated integers, each once (a repeated size would give rows with one key)."""
    try:
        return list(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise InvalidOptionError(f"{name} must be integers separated by commas, e.g. 1,8,32") from None


def _domains(text: str | None) -> list[str]:
    if text is None:
        return []
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        raise InvalidOptionError(f"--domains '{text}' names no domain; give e.g. docstrings,legal,science")
    return names


@bench.command("run")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(v.SCENARIOS),
              help="Repeatable (default: single-stream).")
@click.option("--device", type=click.Choice(v.DEVICES), default="cpu", show_default=True,
              help="Where ONNX artifacts run (auto, cpu, cuda, tensorrt: ONNX Runtime's providers); engine "
                   "artifacts always run on TensorRT.")
@click.option("--baseline", type=click.Choice(["torch"]), help="Add the PyTorch source model as a row.")
@click.option("--baseline-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the PyTorch baseline runs.")
@click.option("--reference", type=click.Path(), help="Artifact parity is measured against (default: the first).")
@click.option("--data", type=click.Path(), help="Real inputs (default: bundled sentences, digits or golden inputs).")
@click.option("--labels", type=click.Path(),
              help="Classifiers: the true class of each --data example (.npy or .txt); adds accuracy.")
@click.option("--batch-sizes", default=",".join(map(str, v.DEFAULT_BATCH_SIZES)), show_default=True,
              help="For offline and sweep.")
@click.option("--sequence-lengths", default=",".join(map(str, v.DEFAULT_SEQUENCE_LENGTHS)), show_default=True,
              help="For sweep (text models).")
@click.option("--rate", type=float, help="Server scenario: requests per second (default: half one worker's capacity).")
@click.option("--queries", type=int, default=v.DEFAULT_SERVER_QUERIES, show_default=True,
              help="Server scenario: requests per run.")
@click.option("--p99-bound-ms", type=float, help="Server scenario: latency bound to check.")
@click.option("--find-max-qps", is_flag=True, help="Search the highest rate whose p99 stays under --p99-bound-ms.")
@click.option("--rounds", type=int, default=v.DEFAULT_ROUNDS, show_default=True,
              help="Interleaved rounds per measurement.")
@click.option("--min-duration", type=float, default=v.DEFAULT_MIN_DURATION_S, show_default=True,
              help="Seconds per variant per round (a block also ends at 10000 calls).")
@click.option("--min-count", type=int, default=v.DEFAULT_MIN_COUNT, show_default=True,
              help="Calls per variant per round.")
@click.option("--threads", type=int, help="Intra-op threads of every variant, the PyTorch baseline included "
                                         "(default: the physical cores this process may use).")
@click.option("--speed-of-light", "speed_of_light", is_flag=True,
              help="Add each ONNX variant's fraction of this machine's GEMM floor (FP32 or INT8 peak x its weight "
                   "GEMMs; needs onnx).")
@click.option("--spinning", is_flag=True,
              help="Let ONNX Runtime's threads spin between ops, as they do outside the bench (faster on a machine "
                   "left to the model; off by default so that variants timed in turn do not take each other's cores).")
@click.option("--strict", is_flag=True, help="Write no report (exit 16) when the machine was too busy to trust it.")
@click.option("--min-cosine", type=float)
@click.option("--min-p01-cosine", type=float)
@click.option("--max-abs-error", type=float)
@click.option("--min-top1-agreement", type=float)
@click.option("--max-new-tokens", type=int, default=v.DEFAULT_MAX_NEW_TOKENS, show_default=True,
              help="Causal LMs: new tokens per request of the generation scenario.")
@click.option("--domains", help="Text models: worst-case parity on held-out domains, e.g. docstrings,legal,science.")
@click.option("--no-memory", is_flag=True, help="Skip the fresh-process memory and cold-start probe.")
@click.option("--json", "json_path", type=click.Path(), help="Write the report as JSON.")
@click.option("--html", "html_path", type=click.Path(), help="Write a self-contained HTML report.")
@click.option("--force", is_flag=True, help="Replace existing report files.")
@click.pass_context
def bench_run_command(ctx, artifacts, scenarios, device, baseline, baseline_device, reference, data, labels,
                      batch_sizes, sequence_lengths, rate, queries, p99_bound_ms, find_max_qps, rounds, min_duration,
                      min_count, threads, speed_of_light, spinning, strict, min_cosine, min_p01_cosine, max_abs_error,
                      min_top1_agreement, max_new_tokens, domains, no_memory, json_path, html_path, force):
    """Measure ARTIFACTS side by side: latency, throughput, size, memory, start-up and parity."""
    from ..bench.runner import BenchOptions, ReportFiles, check_bench, run_bench
    from ..bench.scenarios import Settings
    from ..parity import ParityBudget

    if baseline_device != "cpu" and baseline is None:
        raise InvalidOptionError("--baseline-device says where the PyTorch baseline runs; add --baseline torch")

    options = BenchOptions(
        scenarios=list(scenarios) or ["single-stream"], data=data, labels=labels, device=device, reference=reference,
        batch_sizes=_numbers(batch_sizes, "--batch-sizes"), sequence_lengths=_numbers(sequence_lengths,
                                                                                     "--sequence-lengths"),
        server_rate=rate, server_queries=queries, p99_bound_ms=p99_bound_ms, find_max_qps=find_max_qps,
        budget=ParityBudget(min_cosine, max_abs_error, min_top1_agreement, min_p01_cosine),
        settings=Settings(rounds=rounds, min_duration=min_duration, min_count=min_count),
        measure_memory=not no_memory, threads=threads, reports=ReportFiles(json_path, html_path, force),
        max_new_tokens=max_new_tokens, domains=_domains(domains), strict=strict,
        speed_of_light=speed_of_light, spinning=spinning, given=options_given(ctx))
    checked = check_bench(list(artifacts), options)      # before the baseline loads: every refusal comes first
    extra = []
    if baseline == "torch":
        from ..pipeline.baseline import torch_baseline

        extra.append(torch_baseline(reference or artifacts[0], baseline_device, options.thread_count()[0]))
    report = run_bench(list(artifacts), options, extra, progress=say, meter=TerminalMeter.create("measuring"),
                       checked=checked)
    click.echo(report.table())
    for path in report.written:
        click.echo(f"wrote {path}")
    report.raise_for_failure()


@bench.command("compare")
@click.argument("old", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--max-regression", default=v.DEFAULT_MAX_REGRESSION, show_default=True,
              help="Allowed latency increase / throughput drop.")
@click.option("--max-parity-drop", type=float, default=v.DEFAULT_MAX_PARITY_DROP, show_default=True,
              help="Allowed drop of min cosine or top-1 agreement.")
def bench_compare_command(old, new, max_regression, max_parity_drop):
    """Compare two bench JSON reports; exit non-zero on regressions or rows that vanished."""
    from ..bench.compare import compare, format_deltas, load_report, parse_percent
    from ..outputs import edited_since_written, has_seal

    threshold = parse_percent(max_regression)
    reports = load_report(old), load_report(new)
    comparison = compare(*reports, threshold, max_parity_drop,
                         edited=[path for path in (old, new) if edited_since_written(path)])
    comparison.notes.extend(f"{path} carries no seal (written before edgeport sealed reports, or its seal was cut "
                            "out): an edit to its figures cannot be told" for path in (old, new) if not has_seal(path))
    click.echo(format_deltas(comparison))
    comparison.raise_for_failure()
