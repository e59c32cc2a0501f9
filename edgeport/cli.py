"""The ``edgeport`` command line: parsing and printing only, each command a thin call into
the library.  Heavy modules are imported inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from .errors import EdgeportError


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _show_artifact(path, as_json: bool, verify: bool = False, written: bool = True) -> None:
    """What export, quantize and inspect print: the inspection, as text or JSON."""
    from .inspection import format_inspection, inspect_artifact

    info = inspect_artifact(path, verify=verify)
    if as_json:
        _emit_json(info)
        return
    click.echo(format_inspection(info))
    if written:
        click.echo(f"wrote {path}")


def handle_errors(command):
    """Turn an EdgeportError into ``error: ...`` and its exit code; --debug shows the trace."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except EdgeportError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            ctx.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="edgeport")
def main(debug: bool) -> None:
    """edgeport: take a trained model to a deployable artifact that is proven fast and faithful."""


@main.group()
def export() -> None:
    """Export a model to a deployable graph."""


@export.command("onnx")
@click.argument("source")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--task", type=click.Choice(["feature-extraction", "text-classification", "token-classification",
                                          "image-classification"]), help="Default: detected from config.json.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--static-shapes", is_flag=True, help="Fix batch 1 and --sequence-length instead of dynamic axes.")
@click.option("--sequence-length", type=int, default=128, show_default=True, help="Sequence length for --static-shapes.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE:DTYPE",
              help="Input of a module:callable source, e.g. images:1x3x32x32:float32 (repeatable).")
@click.option("--output-name", "output_names", multiple=True, help="Output names of a module:callable source.")
@click.option("--exporter", type=click.Choice(["auto", "torchscript", "dynamo", "static"]), default="auto",
              show_default=True, help="Export route; auto tries each in turn.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Absolute tolerance of the parity check.")
@click.option("--rtol", type=float, default=1e-3, show_default=True, help="Relative tolerance of the parity check.")
@click.option("--no-validate", is_flag=True, help="Skip the ONNX Runtime vs PyTorch parity check.")
@click.option("--external-data/--no-external-data", default=None, help="Force weights into model.onnx.data (default: only over 2 GB).")
@click.option("--allow-pickle", is_flag=True, help="Allow pytorch_model.bin (pickle) weights.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--adapter", "adapters", multiple=True, type=click.Path(),
              help="peft adapter to merge into SOURCE first (repeatable; see 'edgeport merge').")
@click.option("--weight", "weights", multiple=True, type=float, help="Weight of each --adapter when combining.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def export_onnx_command(source, out, task, opset, static_shapes, sequence_length, inputs, output_names, exporter,
                        atol, rtol, no_validate, external_data, allow_pickle, force, adapters, weights, as_json):
    """Export SOURCE (a Hugging Face model folder or module:callable) to an ONNX artifact."""
    import tempfile

    from .artifact import check_output_path
    from .export.onnx import ExportOptions, export_onnx

    options = ExportOptions(task=task, opset=opset, static_shapes=static_shapes, sequence_length=sequence_length,
                            atol=atol, rtol=rtol, validate=not no_validate, force=force, allow_pickle=allow_pickle,
                            exporter=exporter, inputs=list(inputs), output_names=list(output_names),
                            external_data=external_data)
    say = None if as_json else _progress
    with tempfile.TemporaryDirectory(prefix="edgeport-merged-") as work:
        if adapters:
            from .export.lora import MergeOptions, merge

            check_output_path(out, force)
            source = str(merge(source, f"{work}/merged", MergeOptions(list(adapters), list(weights),
                                                                      allow_pickle=allow_pickle), progress=say))
        artifact = export_onnx(source, out, options, progress=say)
    _show_artifact(artifact.path, as_json)


@main.command("merge")
@click.argument("base", type=click.Path())
@click.option("--adapter", "adapters", multiple=True, required=True, type=click.Path(),
              help="peft adapter folder (repeatable).")
@click.option("--weight", "weights", multiple=True, type=float, help="Weight per --adapter when combining several.")
@click.option("--combination", type=click.Choice(["cat", "linear", "svd"]), default="cat", show_default=True,
              help="How several LoRA adapters combine (peft's add_weighted_adapter); cat is exact.")
@click.option("-o", "--output", "out", required=True, type=click.Path())
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), help="Weights of the output (default: the base's).")
@click.option("--atol", type=float, default=1e-4, show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) base or adapter weights.")
@click.option("--force", is_flag=True)
@handle_errors
def merge_command(base, adapters, weights, combination, out, dtype, atol, allow_pickle, force):
    """Merge LoRA / AdaLoRA (any mergeable peft) adapters into BASE; verified against the PeftModel."""
    from .export.lora import MergeOptions, merge

    path = merge(base, out, MergeOptions(list(adapters), list(weights), combination, dtype, atol,
                                         allow_pickle=allow_pickle, force=force), progress=_progress)
    click.echo(f"wrote {path}")


@main.command("inspect")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-verify", is_flag=True, help="Skip checking the files against their sha256.")
@handle_errors
def inspect_command(artifact, as_json, no_verify):
    """Describe an artifact and verify its checksums."""
    _show_artifact(artifact, as_json, verify=not no_verify, written=False)


@main.command("run")
@click.argument("artifact", type=click.Path())
@click.option("--text", "texts", multiple=True, help="A text to run (repeatable).")
@click.option("--input", "input_file", type=click.Path(),
              help=".npz of feeds (one array per input), .txt of texts (one a line), or an image folder.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: ONNX Runtime's choice).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Micro-batch size.")
@handle_errors
def run_command(artifact, texts, input_file, device, threads, batch_size):
    """Run ARTIFACT on texts, feeds or images; print JSON."""
    from .errors import InvalidOptionError
    from .runtime.cli_run import run_artifact

    if bool(texts) == bool(input_file):
        raise InvalidOptionError("give either --text (one or more) or --input FILE")
    _emit_json(run_artifact(artifact, list(texts), input_file, device, threads, batch_size))


def _calibration_bar():
    """A progress callback for calibration batches; quiet when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    state = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total, label="calibrating", file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(1)
        if done >= total:
            state.pop("bar").__exit__(None, None, None)

    return update


@main.command("quantize")
@click.argument("artifact", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path())
@click.option("--mode", required=True, type=click.Choice(["int8-dynamic", "int8-static", "fp16"]))
@click.option("--target", type=click.Choice(["x86-avx2", "x86-avx512-vnni", "arm64", "gpu"]),
              help="Preset for format, reduce_range and per-channel (default: this host).")
@click.option("--per-channel/--per-tensor", default=None, help="Weight scales per output channel (default: the target's).")
@click.option("--calib", type=click.Path(), help="Calibration data: .txt (one example a line), .jsonl, .npz, or an image folder.")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--data", type=click.Path(), help="Evaluation data for the parity check (default: bundled real data).")
@click.option("--min-cosine", type=float, help="Budget: keep sensitive nodes in FP32 until min cosine >= this.")
@click.option("--max-abs-error", type=float, help="Budget: ... until max abs error <= this.")
@click.option("--min-top1-agreement", type=float, help="Budget for classifiers: ... until top-1 agreement >= this.")
@click.option("--smooth-alpha", type=float, default=0.7, show_default=True,
              help="int8-dynamic activation smoothing strength (0 < a < 1).")
@click.option("--no-smooth", is_flag=True, help="int8-dynamic without activation smoothing.")
@click.option("--no-optimize", is_flag=True, help="Skip ONNX Runtime's transformer fusions.")
@click.option("--no-fp16-fallback", is_flag=True, help="fp16: do not keep overflowing nodes in FP32.")
@click.option("--force", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def quantize_command(artifact, out, mode, target, per_channel, calib, calibration_method, data, min_cosine,
                     max_abs_error, min_top1_agreement, smooth_alpha, no_smooth, no_optimize, no_fp16_fallback,
                     force, as_json):
    """Quantize ARTIFACT to INT8 or FP16, with a parity check against it on real data."""
    from .quantize import QuantizeOptions, quantize

    options = QuantizeOptions(mode=mode, target=target, per_channel=per_channel, calib=calib,
                              calibration_method=calibration_method, data=data, min_cosine=min_cosine,
                              max_abs_error=max_abs_error, min_top1_agreement=min_top1_agreement,
                              smooth_alpha=None if no_smooth else smooth_alpha, optimize=not no_optimize,
                              fp16_fallback=not no_fp16_fallback, force=force)
    result = quantize(artifact, out, options, progress=None if as_json else _progress,
                      calibration_progress=None if as_json else _calibration_bar())
    _show_artifact(result.path, as_json)


class _BenchGroup(click.Group):
    """``edgeport bench A B ...`` runs a benchmark; ``edgeport bench compare OLD NEW`` compares."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmark artifacts side by side (edgeport bench A B ...), or compare two reports."""


@bench.command("run")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--scenario", "scenarios", multiple=True,
              type=click.Choice(["single-stream", "offline", "server", "sweep"]), help="Repeatable (default: single-stream).")
@click.option("--baseline", type=click.Choice(["torch"]), help="Add the PyTorch source model as a reference row.")
@click.option("--reference", type=click.Path(), help="Artifact parity is measured against (default: the first).")
@click.option("--data", type=click.Path(), help="Real inputs (default: bundled sentences, digits or golden inputs).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="For offline and sweep.")
@click.option("--sequence-lengths", default="16,64,128,256", show_default=True, help="For sweep (text models).")
@click.option("--rate", type=float, help="Server scenario: requests per second (default: half one worker's capacity).")
@click.option("--queries", type=int, default=200, show_default=True, help="Server scenario: requests per run.")
@click.option("--p99-bound-ms", type=float, help="Server scenario: latency bound to check.")
@click.option("--find-max-qps", is_flag=True, help="Search the highest rate whose p99 stays under --p99-bound-ms.")
@click.option("--rounds", type=int, default=3, show_default=True, help="Interleaved rounds per measurement.")
@click.option("--min-duration", type=float, default=0.5, show_default=True, help="Seconds per variant per round.")
@click.option("--min-count", type=int, default=10, show_default=True, help="Calls per variant per round.")
@click.option("--threads", type=int, help="Intra-op threads for every ONNX Runtime session.")
@click.option("--min-cosine", type=float)
@click.option("--max-abs-error", type=float)
@click.option("--min-top1-agreement", type=float)
@click.option("--no-memory", is_flag=True, help="Skip the fresh-process memory and cold-start probe.")
@click.option("--json", "json_path", type=click.Path(), help="Write the report as JSON.")
@click.option("--html", "html_path", type=click.Path(), help="Write a self-contained HTML report.")
@handle_errors
def bench_run_command(artifacts, scenarios, baseline, reference, data, batch_sizes, sequence_lengths, rate, queries,
                      p99_bound_ms, find_max_qps, rounds, min_duration, min_count, threads, min_cosine, max_abs_error,
                      min_top1_agreement, no_memory, json_path, html_path):
    """Measure ARTIFACTS side by side: latency, throughput, size, memory, start-up and parity."""
    from .bench.runner import BenchOptions, run_bench
    from .bench.scenarios import Settings
    from .bench.verify import ParityBudget
    from .errors import InvalidOptionError

    def numbers(text, name):
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise InvalidOptionError(f"{name} must be integers separated by commas, e.g. 1,8,32") from None

    options = BenchOptions(
        scenarios=list(scenarios) or ["single-stream"], baseline_torch=baseline == "torch", data=data,
        reference=reference, batch_sizes=numbers(batch_sizes, "--batch-sizes"),
        sequence_lengths=numbers(sequence_lengths, "--sequence-lengths"), server_rate=rate, server_queries=queries,
        p99_bound_ms=p99_bound_ms, find_max_qps=find_max_qps,
        budget=ParityBudget(min_cosine, max_abs_error, min_top1_agreement),
        settings=Settings(rounds=rounds, min_duration=min_duration, min_count=min_count),
        measure_memory=not no_memory, threads=threads)
    bar = _counting_bar()
    report = run_bench(list(artifacts), options, progress=_progress, tick=bar)
    if sys.stderr.isatty():
        click.echo("", err=True)   # end the progress line
    click.echo(report.table())
    if json_path:
        report.write_json(json_path)
        click.echo(f"wrote {json_path}")
    if html_path:
        report.write_html(html_path)
        click.echo(f"wrote {html_path}")
    report.raise_for_failure()


def _counting_bar():
    """A tick per measured block on a terminal; nothing when stderr is not one."""
    if not sys.stderr.isatty():
        return lambda: None
    count = {"n": 0}

    def tick():
        count["n"] += 1
        click.echo(f"\r  measured {count['n']} blocks", nl=False, err=True)

    return tick


@bench.command("compare")
@click.argument("old", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--max-regression", default="5%", show_default=True, help="Allowed latency increase / throughput drop.")
@click.option("--max-parity-drop", type=float, default=0.001, show_default=True,
              help="Allowed drop of min cosine or top-1 agreement.")
@handle_errors
def bench_compare_command(old, new, max_regression, max_parity_drop):
    """Compare two bench JSON reports; exit non-zero on regressions."""
    from .bench.compare import compare, format_deltas, load_report, parse_percent, raise_for_regressions

    threshold = parse_percent(max_regression)
    deltas, unmatched = compare(load_report(old), load_report(new), threshold, max_parity_drop)
    click.echo(format_deltas(deltas, unmatched))
    raise_for_regressions(deltas, threshold, max_parity_drop)


@main.command("verify")
@click.argument("candidate", type=click.Path())
@click.option("--reference", required=True, type=click.Path(), help="The artifact to compare against.")
@click.option("--data", type=click.Path(), help="Evaluation data (default: bundled real data for the task).")
@click.option("--limit", type=int, help="Use at most this many examples.")
@click.option("--min-cosine", type=float)
@click.option("--max-abs-error", type=float)
@click.option("--min-top1-agreement", type=float)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def verify_command(candidate, reference, data, limit, min_cosine, max_abs_error, min_top1_agreement, as_json):
    """Parity gate: compare CANDIDATE with --reference on real data; exit non-zero below the thresholds."""
    from .bench.verify import ParityBudget, verify

    report = verify(candidate, reference, data, ParityBudget(min_cosine, max_abs_error, min_top1_agreement), limit)
    if as_json:
        _emit_json(report.to_dict())
    else:
        click.echo(f"{candidate} against {reference} on {report.data} ({report.samples} samples)")
        click.echo(report.summary())
        click.echo("PASSED" if report.passed else "FAILED")
    report.raise_for_failure(f"'{candidate}'")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
