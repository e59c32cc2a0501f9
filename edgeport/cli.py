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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def export_onnx_command(source, out, task, opset, static_shapes, sequence_length, inputs, output_names, exporter,
                        atol, rtol, no_validate, external_data, allow_pickle, force, as_json):
    """Export SOURCE (a Hugging Face model folder or module:callable) to an ONNX artifact."""
    from .export.onnx import ExportOptions, export_onnx
    from .inspection import format_inspection, inspect_artifact

    options = ExportOptions(task=task, opset=opset, static_shapes=static_shapes, sequence_length=sequence_length,
                            atol=atol, rtol=rtol, validate=not no_validate, force=force, allow_pickle=allow_pickle,
                            exporter=exporter, inputs=list(inputs), output_names=list(output_names),
                            external_data=external_data)
    artifact = export_onnx(source, out, options, progress=None if as_json else _progress)
    info = inspect_artifact(artifact.path, verify=False)
    if as_json:
        _emit_json(info)
    else:
        click.echo(format_inspection(info))
        click.echo(f"wrote {artifact.path}")


@main.command("inspect")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-verify", is_flag=True, help="Skip checking the files against their sha256.")
@handle_errors
def inspect_command(artifact, as_json, no_verify):
    """Describe an artifact and verify its checksums."""
    from .inspection import format_inspection, inspect_artifact

    info = inspect_artifact(artifact, verify=not no_verify)
    if as_json:
        _emit_json(info)
    else:
        click.echo(format_inspection(info))


@main.command("run")
@click.argument("artifact", type=click.Path())
@click.option("--text", "texts", multiple=True, help="A text to run (repeatable).")
@click.option("--input", "input_file", type=click.Path(),
              help=".npz of feeds (one array per input), .txt of texts (one a line), or an image folder.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: ONNX Runtime's choice).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@handle_errors
def run_command(artifact, texts, input_file, device, threads, batch_size):
    """Run ARTIFACT on texts, feeds or images; print JSON."""
    from .errors import InvalidOptionError
    from .runtime.cli_run import run_artifact

    if bool(texts) == bool(input_file):
        raise InvalidOptionError("give either --text (one or more) or --input FILE")
    _emit_json(run_artifact(artifact, list(texts), input_file, device, threads, batch_size))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
