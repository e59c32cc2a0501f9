"""``edgeport export onnx|executorch|tensorrt`` and ``edgeport merge``."""

from __future__ import annotations

import click

from .. import vocabulary as v
from ..errors import InvalidOptionError, refuse_unused
from . import main
from .common import given, say, show_artifact


@main.group()
def export() -> None:
    """Export a model to a deployable graph."""


@export.command("onnx")
@click.argument("source")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--task", type=click.Choice(v.EXPORT_TASKS), help="Default: detected from config.json.")
@click.option("--opset", type=int, help=f"ONNX opset (default {v.DEFAULT_OPSET}).")
@click.option("--static-shapes", is_flag=True, help="Fix batch 1 and --sequence-length instead of dynamic axes.")
@click.option("--sequence-length", type=int,
              help=f"Sequence length for --static-shapes (default {v.DEFAULT_SEQUENCE_LENGTH}).")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE:DTYPE",
              help="Input of a module:callable source, e.g. images:1x3x32x32:float32 (repeatable).")
@click.option("--output-name", "output_names", multiple=True, help="Output names of a module:callable source.")
@click.option("--exporter", type=click.Choice(v.EXPORTERS), help="Export route (default auto: each in turn).")
@click.option("--atol", type=float, help=f"Absolute tolerance of the parity check (default {v.DEFAULT_ATOL:g}).")
@click.option("--rtol", type=float, help=f"Relative tolerance of the parity check (default {v.DEFAULT_RTOL:g}).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int4"]),
              help="Causal LMs: precision the model builder writes (default fp32).")
@click.option("--route", type=click.Choice(["auto", "genai", "onnx"]),
              help="Causal LMs: ONNX Runtime GenAI's builder, edgeport's own KV-cache export, or auto (the builder "
                   "where it knows the family and matches, else the second route).")
@click.option("--no-validate", is_flag=True, help="Skip the ONNX Runtime vs PyTorch parity check.")
@click.option("--external-data/--no-external-data", default=None,
              help="Force weights into model.onnx.data (default: only over 2 GB).")
@click.option("--allow-pickle", is_flag=True, help="Allow pytorch_model.bin (pickle) weights.")
@click.option("--force", is_flag=True, help="Replace an existing output artifact.")
@click.option("--adapter", "adapters", multiple=True, type=click.Path(),
              help="peft adapter to merge into SOURCE first (repeatable; see 'edgeport merge').")
@click.option("--weight", "weights", multiple=True, type=float, help="Weight of each --adapter when combining.")
@click.option("--runtime-adapter", "runtime_adapters", multiple=True, metavar="NAME=PATH",
              help="Causal LMs: a peft LoRA adapter kept separate and switched at run time (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_onnx_command(source, out, task, opset, static_shapes, sequence_length, inputs, output_names, exporter,
                        atol, rtol, precision, route, no_validate, external_data, allow_pickle, force, adapters, weights,
                        runtime_adapters, as_json):
    """Export SOURCE (a Hugging Face model folder, a .keras file or module:callable) to an ONNX artifact."""
    from ..export.api import export_with_adapters
    from ..export.onnx import ExportOptions

    if no_validate and (atol is not None or rtol is not None):
        raise InvalidOptionError("--atol and --rtol set the parity check --no-validate skips; give one or the other")
    if static_shapes and exporter not in (None, "static"):
        raise InvalidOptionError(f"--static-shapes exports by the static route; --exporter {exporter} is never tried "
                                 "with it (drop one of them)")
    static_shapes = static_shapes or exporter == "static"     # the static route writes fixed shapes either way
    if sequence_length is not None and not static_shapes:
        raise InvalidOptionError("--sequence-length fixes the length of a --static-shapes export; without it the "
                                 "graph takes any length up to the tokenizer's max_length (add --static-shapes)")
    options = ExportOptions(**given(task=task, opset=opset, sequence_length=sequence_length, exporter=exporter,
                                    atol=atol, rtol=rtol, precision=precision, route=route),
                            static_shapes=static_shapes, validate=not no_validate, force=force,
                            allow_pickle=allow_pickle, inputs=list(inputs), output_names=list(output_names),
                            external_data=external_data, runtime_adapters=_named(runtime_adapters))
    artifact = export_with_adapters(source, out, options, list(adapters), list(weights),
                                    progress=None if as_json else say)
    show_artifact(artifact.path, as_json)


@export.command("executorch")
@click.argument("source")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="8-bit with the XNNPACK quantizer (PT2E): static activations where they hold the budget, else "
                   "dynamic; gated on --min-cosine / --min-top1-agreement (default min cosine 0.99).")
@click.option("--task", type=click.Choice(v.EXPORT_TASKS), help="Default: detected from config.json.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE:DTYPE",
              help="Input of a module:callable source, e.g. images:1x1x8x8:float32 (repeatable).")
@click.option("--output-name", "output_names", multiple=True, help="Output names of a module:callable source.")
@click.option("--max-batch", type=int, help="Largest batch the program takes (default 8): activation memory is "
                                            "planned for it.")
@click.option("--sequence-length", type=int, help="Text: the longest sequence the program takes (default: the "
                                                  "model's maximum length).")
@click.option("--calib", type=click.Path(), help="module:callable sources: an .npz of real inputs to calibrate "
                                                 "static INT8 on (without one, INT8 is dynamic).")
@click.option("--atol", type=float, help=f"FP32 parity tolerance (default {v.DEFAULT_ATOL:g}).")
@click.option("--rtol", type=float, help=f"FP32 relative tolerance (default {v.DEFAULT_RTOL:g}).")
@click.option("--min-cosine", type=float, help="INT8: lowest cosine against PyTorch on any check input.")
@click.option("--min-top1-agreement", type=float, help="INT8 classifiers: lowest top-1 agreement with PyTorch.")
@click.option("--adapter", "adapters", multiple=True, type=click.Path(),
              help="peft LoRA adapter to merge first (repeatable; verified, recorded in the lineage).")
@click.option("--weight", "weights", multiple=True, type=float, help="Weight per --adapter when combining several.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights.")
@click.option("--force", is_flag=True, help="Replace an existing artifact folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_executorch_command(source, out, quantize, task, inputs, output_names, max_batch, sequence_length, calib,
                              atol, rtol, min_cosine, min_top1_agreement, adapters, weights, allow_pickle, force,
                              as_json):
    """Export SOURCE (a Hugging Face folder, a .keras file or module:callable) to an ExecuTorch
    program (.pte) lowered to XNNPACK, checked against PyTorch in ExecuTorch's runtime."""
    from ..export.api import export_with_adapters
    from ..export.executorch import ExecuTorchOptions, export_executorch

    options = ExecuTorchOptions(**given(task=task, max_batch=max_batch, atol=atol, rtol=rtol),
                                quantize=quantize, inputs=list(inputs), output_names=list(output_names),
                                sequence_length=sequence_length, calib=calib, min_cosine=min_cosine,
                                min_top1_agreement=min_top1_agreement, allow_pickle=allow_pickle, force=force)
    artifact = export_with_adapters(source, out, options, list(adapters), list(weights),
                                    progress=None if as_json else say, exporter=export_executorch)
    show_artifact(artifact.path, as_json)


@export.command("adapter")
@click.argument("adapter", type=click.Path())
@click.option("--base", required=True, type=click.Path(),
              help="The causal-LM artifact exported with --runtime-adapter.")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="The .onnx_adapter file to write.")
@click.option("--force", is_flag=True, help="Replace an existing adapter file.")
def export_adapter_command(adapter, base, out, force):
    """Convert a peft LoRA ADAPTER into a runtime adapter file for a causal-LM artifact."""
    from ..export.adapters import export_runtime_adapter

    click.echo(f"wrote {export_runtime_adapter(base, adapter, out, force, progress=say)}")


def _named(pairs) -> dict[str, str]:
    named = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise InvalidOptionError(f"--runtime-adapter '{pair}' must look like NAME=PATH")
        if name in named:
            raise InvalidOptionError(f"--runtime-adapter names '{name}' twice")
        named[name] = path
    return named


@main.command("merge")
@click.argument("base", type=click.Path())
@click.option("--adapter", "adapters", multiple=True, required=True, type=click.Path(),
              help="peft adapter folder (repeatable).")
@click.option("--weight", "weights", multiple=True, type=float, help="Weight per --adapter when combining several.")
@click.option("--combination", type=click.Choice(v.COMBINATIONS),
              help="How several LoRA adapters combine (peft's add_weighted_adapter; default cat, which is exact).")
@click.option("-o", "--output", "out", required=True, type=click.Path())
@click.option("--dtype", type=click.Choice(v.WEIGHT_DTYPES), help="Weights of the output (default: the base's).")
@click.option("--atol", type=float, help=f"Tolerance of merged vs unmerged (default {v.DEFAULT_ATOL:g}).")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) base or adapter weights.")
@click.option("--force", is_flag=True, help="Replace an existing merged model folder.")
def merge_command(base, adapters, weights, combination, out, dtype, atol, allow_pickle, force):
    """Merge LoRA / AdaLoRA (any mergeable peft) adapters into BASE; verified against the PeftModel."""
    from ..export.lora import MergeOptions, merge

    options = MergeOptions(list(adapters), list(weights), **given(combination=combination, atol=atol), dtype=dtype,
                           allow_pickle=allow_pickle, force=force)
    path = merge(base, out, options, progress=say)
    click.echo(f"wrote {path}")


@export.command("tensorrt")
@click.argument("source", type=click.Path())
@click.option("-o", "--output", "out", type=click.Path(), help="Engine artifact folder to write (not with --dry-run).")
@click.option("--shapes", multiple=True, metavar="NAME:MIN,OPT,MAX",
              help="Optimisation profile of an input, e.g. input_ids:1x16,8x128,32x512 (repeatable; inputs that "
                   "share an axis share its range). Default: from the manifest's dynamic axes.")
@click.option("--fp16", is_flag=True, help="Quantize to FP16 first (edgeport quantize --mode fp16).")
@click.option("--int8", is_flag=True, help="Quantize to symmetric INT8 Q/DQ first (--mode int8-static --target gpu).")
@click.option("--calib", type=click.Path(), help="Calibration data for --int8.")
@click.option("--data", type=click.Path(), help="Parity data (default: bundled real sentences or digits).")
@click.option("--via", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True,
              help="Build with TensorRT itself, or keep ONNX for ONNX Runtime's TensorRT execution provider.")
@click.option("--workspace-mb", type=int, default=v.DEFAULT_WORKSPACE_MB, show_default=True,
              help="Builder workspace limit.")
@click.option("--timing-cache", type=click.Path(), help="Timing cache file (default ~/.cache/edgeport/tensorrt).")
@click.option("--dry-run", is_flag=True, help="Print the build plan and exit; needs no GPU.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or the result as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing output artifact.")
def export_tensorrt_command(source, out, shapes, fp16, int8, calib, data, via, workspace_mb, timing_cache, dry_run,
                            as_json, force):
    """Build a TensorRT engine for this GPU from SOURCE (an ONNX artifact), with its parity measured."""
    import json

    from ..engines import TensorRTOptions, export_tensorrt

    if not dry_run and not out:
        raise InvalidOptionError("give -o/--output (or --dry-run to see the plan)")
    if dry_run:     # the plan reads the graph and the GPU; it writes and measures nothing
        refuse_unused((("-o/--output", out), ("--data", data), ("--force", force)),
                      "to --dry-run, which prints the build plan and writes nothing")
    options = TensorRTOptions(shapes=list(shapes), fp16=fp16, int8=int8, calib=calib, data=data, via=via,
                              workspace_mb=workspace_mb, timing_cache=timing_cache, dry_run=dry_run, force=force)
    result = export_tensorrt(source, out, options, progress=None if as_json else say)
    if not dry_run:
        show_artifact(result.path, as_json)
        return
    click.echo(json.dumps(result.to_dict(), indent=1) if as_json else "\n".join(result.lines()))
    if result.blocking:
        from ..errors import UnsupportedModelError

        raise UnsupportedModelError("the build would fail: " + "; ".join(result.blocking))
