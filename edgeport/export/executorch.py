"""``edgeport export executorch``: an ExecuTorch program (``model.pte``) lowered to XNNPACK,
from the sources ``export onnx`` takes, behind the same parity gate.

The path: ``torch.export`` with the batch (and sequence) as bounded dims, optionally PT2E
8-bit quantization with the XNNPACK quantizer, ``to_edge_transform_and_lower`` with the
XNNPACK partitioner, ``to_executorch``.  The program is then run by ExecuTorch's runtime on
real inputs (docstring sentences through the model's tokenizer, or digits) and compared
with PyTorch before anything is written.

What was measured here (ExecuTorch 1.5.1, torch 2.13), and what it decided:

- Bounds are memory: ExecuTorch plans its activation arena for the largest shapes declared,
  once (MiniLM: 18.5 MiB at batch 8 x 128 tokens, 896 MiB at 32 x 512).  The defaults are a
  batch of 8 and the model's own maximum length; ``--max-batch`` and ``--sequence-length``
  make them tighter for a device.  The planned bytes are in the manifest.
- INT8 on transformers is XNNPACK's dynamically quantized linear layers (weights int8 per
  output channel; activations quantized per call): MiniLM mean cosine 0.999 against FP32 on
  held-out sentences.  Static activation quantization collapsed to 0.35 there (attention and
  LayerNorm outputs in int8), so static is tried first and kept only where the fake-quantized
  model already meets the budget (CNNs: digits top-1 unchanged), calibrated on real data.
- Two ExecuTorch 1.5.1 quirks are worked around: the XNNPACK quantizer turns integer index
  arithmetic into float buffers (``IntegerScalarsKept``), and the XNNPACK convolution pass
  narrows a dynamic batch to 15 (``restore_ranges``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import Artifact, finalize_manifest
from ..errors import (CalibrationDataError, EdgeportError, ExportError, InvalidOptionError, UnsupportedModelError,
                      require)
from ..golden import save_golden
from ..manifest import GOLDEN_NAME, Manifest, tool_versions
from ..outputs import ARTIFACT, check_output, staged_output
from ..parity import ParityBudget, compare_outputs, merge_reports
from ..vocabulary import BATCH, DEFAULT_ATOL, DEFAULT_RTOL, SEQUENCE
from .prepare import CallableSource, ExportJob, HfSource, run_module
from .quiet import quiet_torch_loggers, quiet_torch_onnx
from .source import is_callable_source, parse_input_spec, recorded_source
from .text_inputs import check_room_for_text
from ..workdirs import work_folder

QUANTIZE_MODES = ("int8",)
DEFAULT_MAX_BATCH = 8
DEFAULT_INT8_MIN_COSINE = 0.99        # the gate when no budget is given
CALIBRATION_SAMPLES = 64


@dataclass
class ExecuTorchOptions:
    task: str | None = None
    inputs: list[str] = field(default_factory=list)          # module:callable sources
    output_names: list[str] = field(default_factory=list)
    quantize: str | None = None                              # None (fp32) or "int8"
    max_batch: int = DEFAULT_MAX_BATCH
    sequence_length: int | None = None                       # text: the longest sequence (default: the model's)
    calib: str | None = None                                 # module:callable sources: real calibration inputs (.npz)
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    allow_pickle: bool = False
    force: bool = False

    def check(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise InvalidOptionError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)} (got {self.quantize!r})")
        for option, value, low in (("--max-batch", self.max_batch, 1), ("--sequence-length", self.sequence_length, 2)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise InvalidOptionError(f"{option} must be a whole number >= {low} (got {value!r})")
        if self.quantize is None and (self.min_cosine is not None or self.min_top1_agreement is not None):
            raise InvalidOptionError("--min-cosine and --min-top1-agreement gate --quantize int8; the FP32 program "
                                     "is gated on --atol/--rtol")
        if self.calib is not None and self.quantize is None:
            raise InvalidOptionError("--calib calibrates --quantize int8")
        if self.quantize is not None and (self.atol != DEFAULT_ATOL or self.rtol != DEFAULT_RTOL):
            raise InvalidOptionError("--atol and --rtol gate the FP32 program; --quantize int8 is gated on "
                                     "--min-cosine / --min-top1-agreement")
        self.budget()

    def budget(self) -> ParityBudget:
        return ParityBudget(min_cosine=self.min_cosine, min_top1_agreement=self.min_top1_agreement)


@dataclass
class Program:
    """A lowered program and what is known about it."""

    buffer: bytes
    scheme: str                          # fp32 | int8-static | int8-dynamic
    delegation: dict[str, Any]
    planned_bytes: int
    candidates: list[dict] = field(default_factory=list)


def export_executorch(source: str, out, options: ExecuTorchOptions, progress=None, extra_inputs: tuple = ()
                      ) -> Artifact:
    with quiet_torch_loggers():
        return _export(source, out, options, progress, extra_inputs)


def _export(source: str, out, options: ExecuTorchOptions, progress, extra_inputs: tuple) -> Artifact:
    say = progress or (lambda message: None)
    options.check()
    source_text = str(source)
    if source_text.lower().endswith(".keras"):
        from .executorch_keras import export_keras_executorch

        return export_keras_executorch(Path(source_text), out, options, say)
    callable_source = is_callable_source(source_text)
    if (options.inputs or options.output_names) and not callable_source:
        raise InvalidOptionError(f"{'--input' if options.inputs else '--output-name'} is only for module:callable "
                                 "sources; a model folder declares its inputs and outputs")
    if options.calib and not callable_source:
        raise InvalidOptionError("--calib is for module:callable sources; a model folder is calibrated on real data "
                                 "(docstring sentences through its tokenizer, or digits)")
    protected = () if callable_source else (source_text, *extra_inputs)
    check_output(out, options.force, protected, ARTIFACT)
    require("torch", "export")
    require("executorch", "executorch")
    with work_folder("edgeport-executorch-") as work_dir:
        if callable_source:
            model = CallableSource(source_text, [parse_input_spec(s) for s in options.inputs], options.output_names,
                                   options.task)
        else:
            model = HfSource(Path(source_text), options.task, options.allow_pickle, 128, Path(work_dir))
        variants = model.variants(False)
        job = model.job("fixed-size" if "fixed-size" in variants else variants[0])
        if not callable_source:        # a folder's task is known: top-1 agreement means nothing without classes
            options.budget().check_task(job.task)
        bounds = _bounds(job, options)
        say(f"task {job.task}; inputs {', '.join(job.input_names)}; bounds "
            + ", ".join(f"{k} {lo}..{hi}" for k, (lo, hi) in bounds.items()))
        checks = [chunk for batch in job.validation_batches for chunk in _within(batch, job, bounds)]
        calibration = _calibration(model, job, bounds, options, callable_source) if options.quantize else []
        if callable_source and options.calib:
            # --input specs give random inputs, which say nothing about 8-bit ranges calibrated on
            # real data: the gate runs on the rows of --calib that calibration did not use.
            checks, job.validation_data = _held_out_calibration(job, bounds, options)
        checks.append(at_upper_bounds(checks[0], job, bounds))
        references = [dict(zip(job.output_names, (o.detach().float().numpy() for o in
                                                  run_module(job.module, job.input_names, feeds)))) for feeds in checks]
        lowered = lowered_for_job(job, options, calibration, checks, references, say)
        say(f"XNNPACK runs {lowered.delegation['delegated_nodes']} of "
            f"{lowered.delegation['delegated_nodes'] + lowered.delegation['non_delegated_nodes']} nodes; "
            f"activation memory planned: {_size(lowered.planned_bytes)}")
        pte = Path(work_dir) / "model.pte"
        pte.write_bytes(lowered.buffer)
        parity = _check_program(pte, job, bounds, checks, references, options, lowered.scheme)
        return _write(out, source_text, job, options, bounds, lowered, pte, checks, references, parity, protected)


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 1024:.1f} KiB"


def lowered_for_job(job: ExportJob, options: ExecuTorchOptions, calibration: list[dict], checks: list[dict],
                    references: list[dict], say=lambda message: None) -> Program:
    """Capture the job's module with bounded dims, quantize it when asked, lower it."""
    bounds = _bounds(job, options)
    say("capturing the model with torch.export...")
    program = _capture(job, bounds)
    if options.quantize:
        return _quantized(program, job, bounds, calibration, checks, references, options, say)
    say("lowering to XNNPACK...")
    return _lower(program, "fp32")


def _bounds(job: ExportJob, options: ExecuTorchOptions) -> dict[str, tuple[int, int]]:
    """Every named dim the program takes, with its (min, max)."""
    labels = {label for axes in job.input_axes.values() for label in axes.values()}
    unknown = sorted(labels - {BATCH, SEQUENCE})
    if unknown:
        raise UnsupportedModelError(f"ExecuTorch programs here take a dynamic batch (and text length); this model's "
                                    f"inputs also vary in {', '.join(unknown)}")
    bounds = {}
    if BATCH in labels:
        bounds[BATCH] = (1, options.max_batch)
    if SEQUENCE in labels:
        # The model's own position table bounds the text too (a folder without a tokenizer has no max_length).
        positions = min((limits["max_shape"][1] for limits in job.input_limits.values()
                         if isinstance(limits.get("max_shape"), list) and len(limits["max_shape"]) > 1
                         and isinstance(limits["max_shape"][1], int)), default=None)
        if options.sequence_length and positions and options.sequence_length > positions:
            raise InvalidOptionError(f"--sequence-length {options.sequence_length} is past the {positions} positions "
                                     "this model has; give at most that")
        longest = options.sequence_length or min(int(job.processing.get("max_length") or 512), positions or 512)
        if options.sequence_length and "tokenizer.json" in job.copy_files:
            check_room_for_text(longest, job.copy_files["tokenizer.json"], longest)
        bounds[SEQUENCE] = (1, longest)
    elif options.sequence_length is not None:
        raise InvalidOptionError(f"--sequence-length bounds a text model's sequence; this model's inputs "
                                 f"({', '.join(job.input_names)}) have none")
    return bounds


def _within(feeds: dict[str, np.ndarray], job: ExportJob, bounds) -> list[dict[str, np.ndarray]]:
    """``feeds`` cut to the bounds: rows in chunks of the largest batch, text to the longest
    sequence."""
    longest = bounds.get(SEQUENCE, (0, None))[1]
    rows = len(next(iter(feeds.values())))
    step = bounds.get(BATCH, (0, rows))[1]
    chunks = []
    for start in range(0, rows, step):
        chunk = {}
        for name in job.input_names:
            value = feeds[name][start:start + step]
            if longest and SEQUENCE in job.input_axes.get(name, {}).values():
                value = value[:, :longest]
            chunk[name] = np.ascontiguousarray(value)
        chunks.append(chunk)
    return chunks


def at_upper_bounds(feeds: dict[str, np.ndarray], job: ExportJob, bounds) -> dict[str, np.ndarray]:
    """``feeds`` grown to the largest shapes the program declares (rows repeated, text padded
    with its pad id and a zero mask): memory is planned for them, so they are checked too."""
    grown = {}
    rows = bounds.get(BATCH, (0, None))[1]
    longest = bounds.get(SEQUENCE, (0, None))[1]
    for name in job.input_names:
        value = feeds[name]
        axes = job.input_axes.get(name, {})
        if rows and BATCH in axes.values():
            value = np.resize(value, (rows, *value.shape[1:]))
        if longest and SEQUENCE in axes.values() and value.shape[1] < longest:
            fill = job.processing.get("pad_id", 0) if name == "input_ids" else 0
            value = np.pad(value, [(0, 0), (0, longest - value.shape[1])] + [(0, 0)] * (value.ndim - 2),
                           constant_values=fill)
        grown[name] = np.ascontiguousarray(value)
    return grown


def _dims(job: ExportJob, bounds, flat: bool = False):
    from torch.export import Dim

    dims = {label: Dim(label, min=low, max=high) for label, (low, high) in bounds.items()}
    per_input = tuple({axis: dims[label] for axis, label in job.input_axes.get(name, {}).items()} or None
                      for name in job.input_names)
    # the job's wrapper is forward(*args): one entry holding every input's dims (one shared Dim
    # object per name); a module torch.export already flattened takes them one by one
    return per_input if flat else (per_input,)


def _example(job: ExportJob, bounds):
    """The trace inputs, cut to the bounds: a --sequence-length below the example text's length
    would otherwise be a constraint torch.export refuses."""
    import torch

    example = _within(job.trace_inputs, job, bounds)[0]
    return tuple(torch.from_numpy(example[n]) for n in job.input_names)


def _capture(job: ExportJob, bounds, module=None):
    """``torch.export`` of the job's module; a model it cannot capture is refused with the
    reason (data-dependent control flow, an operator without a meta kernel...)."""
    import torch

    try:
        with torch.no_grad(), quiet_torch_onnx():
            return torch.export.export(module or job.module, _example(job, bounds),
                                       dynamic_shapes=_dims(job, bounds, flat=module is not None), strict=False)
    except Exception as exc:  # torch.export raises many kinds; all mean: this model does not capture
        first = (str(exc).strip().splitlines() or [""])[0][:400]
        raise UnsupportedModelError(f"torch.export cannot capture this model for ExecuTorch: {type(exc).__name__}: "
                                    f"{first}") from exc


def restore_ranges(edge, ranges: dict) -> None:
    """ExecuTorch 1.5.1: lowering convolutions to XNNPACK narrows a dynamic batch's range
    (to 2..15 here, in the shape environment and the program's range constraints alike), so
    memory is planned too small and batches of 16 fail; the ranges the model was captured
    with (``ranges``: symbol name -> range) are put back before planning."""
    program = edge.exported_program()
    for symbol in list(program.range_constraints):
        if str(symbol) in ranges:
            program.range_constraints[symbol] = ranges[str(symbol)]
    for node in program.graph_module.graph.nodes:
        value = node.meta.get("val")
        for size in getattr(value, "shape", ()):
            if hasattr(size, "node") and hasattr(size.node, "shape_env"):
                environment = size.node.shape_env
                for symbol in list(environment.var_to_range):
                    if str(symbol) in ranges:
                        environment.var_to_range[symbol] = ranges[str(symbol)]
                return


def _lower(program, scheme: str) -> Program:
    captured = {str(symbol): value_range for symbol, value_range in program.range_constraints.items()}
    try:
        with quiet_torch_onnx():       # importing torchao (through ExecuTorch) logs about kernels it lacks
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.devtools.backend_debug import get_delegation_info
            from executorch.exir import to_edge_transform_and_lower

            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            restore_ranges(edge, captured)
            info = get_delegation_info(edge.exported_program().graph_module)   # before to_executorch rewrites it
            executorch_program = edge.to_executorch()
    except EdgeportError:
        raise
    except Exception as exc:  # ExecuTorch's passes raise whatever they raise; all mean: cannot lower
        first = (str(exc).strip().splitlines() or [""])[0][:400]
        raise ExportError(f"ExecuTorch could not lower the model: {type(exc).__name__}: {first}") from exc
    table = info.get_operator_delegation_dataframe()
    kept = {str(row.op_type): int(row.occurrences_in_non_delegated_graphs) for row in table.itertuples()
            if row.op_type not in ("Total", "getitem") and row.occurrences_in_non_delegated_graphs > 0}
    plan = executorch_program.executorch_program.execution_plan[0]
    delegated, portable = int(info.num_delegated_nodes), int(info.num_non_delegated_nodes)
    delegation = {"backend": "XnnpackBackend", "delegated_subgraphs": int(info.num_delegated_subgraphs),
                  "delegated_nodes": delegated, "non_delegated_nodes": portable,
                  "delegated_share": round(delegated / max(1, delegated + portable), 4),
                  "not_delegated_ops": dict(sorted(kept.items(), key=lambda item: -item[1]))}
    return Program(executorch_program.buffer, scheme, delegation, int(sum(plan.non_const_buffer_sizes)))


# ----------------------------------------------------------------- 8-bit quantization


def _quantizer(dynamic: bool):
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)

    scalar_forms = {torch.ops.aten.add.Tensor: torch.ops.aten.add.Scalar,
                    torch.ops.aten.mul.Tensor: torch.ops.aten.mul.Scalar}

    class IntegerScalarsKept(XNNPACKQuantizer):
        """ExecuTorch 1.5.1's XNNPACK quantizer turns every scalar operand of add/mul into a
        float32 buffer, integer index arithmetic included (transformers' mask code:
        ``arange(n) + 0``), which breaks indexing; integer nodes are hidden from that pass."""

        def transform_for_annotation(self, model):
            hidden = {}
            for node in model.graph.nodes:
                value = node.meta.get("val")
                if node.op == "call_function" and node.target in scalar_forms and isinstance(value, torch.Tensor) \
                        and not value.dtype.is_floating_point:
                    hidden[node] = node.target
                    node.target = scalar_forms[node.target]
            model = super().transform_for_annotation(model)
            for node, target in hidden.items():
                node.target = target
            model.recompile()
            return model

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    return IntegerScalarsKept().set_global(config)


def _quantized(program, job: ExportJob, bounds, calibration, checks, references, options: ExecuTorchOptions,
               say) -> Program:
    """Static activation quantization where the fake-quantized model already meets the
    budget, else dynamic; the lowered program is gated afterwards (``_check_program``)."""
    import torch

    with quiet_torch_onnx():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    budget = _int8_budget(options)
    candidates = []
    schemes = ["static", "dynamic"] if calibration else ["dynamic"]
    for scheme in schemes:
        say(f"int8 ({scheme} activations): preparing and calibrating on {len(calibration)} batches..."
            if scheme == "static" else "int8 (dynamic activations, per-channel weights): converting...")
        try:
            with quiet_torch_onnx():
                prepared = prepare_pt2e(program.module(), _quantizer(scheme == "dynamic"))
                with torch.no_grad():
                    for feeds in (calibration if scheme == "static" else checks[:1]):
                        prepared(*[torch.from_numpy(feeds[n]) for n in job.input_names])
                converted = convert_pt2e(prepared)
        except Exception as exc:  # PT2E raises whatever its passes raise: this scheme does not apply
            candidates.append({"scheme": scheme, "kept": False, "reason": f"{type(exc).__name__}: "
                               f"{(str(exc).splitlines() or [''])[0][:300]}"})
            continue
        if scheme == "static":
            figures = _fake_quant_parity(converted, job, checks, references, budget)
            candidates.append({"scheme": scheme, "checked_on": "the fake-quantized PyTorch model", **figures})
            if figures["failures"]:
                say(f"  static passed over: {'; '.join(figures['failures'])}")
                continue
        say("lowering to XNNPACK...")
        lowered = _lower(_capture(job, bounds, converted), f"int8-{scheme}")
        candidates.append({"scheme": scheme, "kept": True})
        lowered.candidates = candidates
        return lowered
    reasons = "; ".join(f"{c['scheme']}: {c.get('reason') or ', '.join(c.get('failures', []))}" for c in candidates)
    raise ExportError(f"no 8-bit scheme applies to this model ({reasons}); nothing was written")


def _int8_budget(options: ExecuTorchOptions) -> dict[str, float]:
    budget = options.budget()
    return budget.thresholds() if budget.given else {"min_cosine": DEFAULT_INT8_MIN_COSINE}


def _fake_quant_parity(converted, job: ExportJob, checks, references, budget) -> dict:
    import torch

    failures: dict[str, str] = {}           # the first failure of each output
    worst = None
    for feeds, reference in zip(checks, references):
        with torch.no_grad():
            out = converted(*[torch.from_numpy(feeds[n]) for n in job.input_names])
        out = out if isinstance(out, (tuple, list)) else (out,)
        got = dict(zip(job.output_names, (o.detach().float().numpy() for o in out)))
        report = compare_outputs(reference, got, task=job.task, token_mask=feeds.get("attention_mask"),
                                 thresholds=budget)
        for failure in report.failures:
            failures.setdefault(failure.split(":")[0], failure)
        cosines = [o.get("min_cosine") for o in report.to_dict().get("outputs", {}).values()]
        cosines = [c for c in cosines if c is not None]
        if cosines:
            worst = min(cosines + ([worst] if worst is not None else []))
    return {"min_cosine": worst, "failures": list(failures.values()), "kept": not failures}


def _read_calib(job: ExportJob, path: str) -> dict[str, np.ndarray]:
    from ..data.readers import read_examples

    kind, data = read_examples(path)
    if kind != "feeds" or sorted(data) != sorted(job.input_names):
        raise CalibrationDataError(f"--calib '{path}' must be an .npz with one array per input: "
                                   f"{', '.join(job.input_names)}")
    return {n: np.asarray(data[n], dtype=job.trace_inputs[n].dtype) for n in job.input_names}


def _held_out_calibration(job: ExportJob, bounds, options: ExecuTorchOptions) -> tuple[list[dict], str]:
    data = _read_calib(job, options.calib)
    rows = len(next(iter(data.values())))
    if rows > CALIBRATION_SAMPLES:
        held = {n: v[CALIBRATION_SAMPLES:CALIBRATION_SAMPLES * 2] for n, v in data.items()}
        what = f"{len(next(iter(held.values())))} rows of --calib that calibration did not use"
    else:
        held, what = data, f"the {rows} rows of --calib (too few to hold any out)"
    return _within(held, job, bounds), what


def _calibration(model, job: ExportJob, bounds, options: ExecuTorchOptions, callable_source: bool) -> list[dict]:
    """Real calibration batches for static activation quantization: docstring sentences
    (the calibration split) through the model's tokenizer, digits for vision models, or the
    user's ``--calib`` file for module:callable sources (without one: none, and the dynamic
    scheme, which needs none)."""
    from ..data import digits_images, stdlib_sentences

    if callable_source:
        if not options.calib:
            return []
        batches = [{n: v[:CALIBRATION_SAMPLES] for n, v in _read_calib(job, options.calib).items()}]
    elif "pixel_values" in job.input_names:
        images, _ = digits_images(CALIBRATION_SAMPLES, offset=100)
        size = tuple(job.processing["image"]["size"])
        batches = [{"pixel_values": model.vision.pixels(images, size)}]
    else:
        processor = model.text(False).processor
        if processor is None:
            return []
        batches = [processor.encode(stdlib_sentences(CALIBRATION_SAMPLES, split="calib"))]
    return [chunk for batch in batches for chunk in _within(batch, job, bounds)]


# ----------------------------------------------------------------- checking and writing


def _check_program(pte: Path, job: ExportJob, bounds, checks, references, options: ExecuTorchOptions, scheme: str,
                   reference_name: str = "PyTorch"):
    """Run the program in ExecuTorch's runtime on every check batch; each must pass, and
    the figures recorded are over all of them."""
    from ..runtime.executorch import ExecuTorchRunner

    thresholds = ({"atol": options.atol, "rtol": options.rtol} if scheme == "fp32" else _int8_budget(options))
    manifest = Manifest(task=job.task, graph={"outputs": [{"name": n} for n in job.output_names],
                                              "bounds": {k: list(v) for k, v in bounds.items()}})
    manifest.graph["inputs"] = _input_specs(job)
    reports = []
    with ExecuTorchRunner(pte, manifest) as runner:
        for feeds, reference in zip(checks, references):
            got = runner.run(feeds)
            report = compare_outputs(reference, got, task=job.task, token_mask=feeds.get("attention_mask"),
                                     data=job.validation_data, reference_name=reference_name, thresholds=thresholds)
            report.raise_for_failure(f"the ExecuTorch program ({scheme}) on inputs {_shapes(feeds)}")
            reports.append(report)
    return merge_reports(reports)


def _shapes(feeds) -> str:
    return ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())


def _input_specs(job: ExportJob) -> list[dict]:
    specs = []
    for name in job.input_names:
        value = job.trace_inputs[name]
        axes = job.input_axes.get(name, {})
        spec = {"name": name, "dtype": value.dtype.name,
                "shape": [axes.get(axis, size) for axis, size in enumerate(value.shape)]}
        spec.update({k: v for k, v in job.input_limits.get(name, {}).items() if k == "range"})
        specs.append(spec)
    return specs


def _output_specs(job: ExportJob, references) -> list[dict]:
    specs = []
    for name in job.output_names:
        value = references[0][name]
        axes = job.output_axes.get(name, {})
        specs.append({"name": name, "dtype": "float32",
                      "shape": [axes.get(axis, size) for axis, size in enumerate(value.shape)]})
    return specs


def _write(out, source: str, job: ExportJob, options: ExecuTorchOptions, bounds, lowered: Program, pte: Path,
           checks, references, parity, protected: tuple) -> Artifact:
    with staged_output(out, options.force, protected, ARTIFACT) as folder:
        shutil.copyfile(pte, folder / "model.pte")
        save_golden(folder / GOLDEN_NAME, checks[0], references[0])
        for name, path in job.copy_files.items():
            shutil.copyfile(path, folder / name)
        graph = {"format": "executorch", "file": "model.pte", "inputs": _input_specs(job),
                 "outputs": _output_specs(job, references), "static_shapes": False,
                 "bounds": {k: list(v) for k, v in bounds.items()},
                 "delegation": lowered.delegation,
                 "memory": {"planned_activation_bytes": lowered.planned_bytes}}
        precision = {"mode": lowered.scheme, "kept_fp32_nodes": [], "calibration": None}
        if lowered.scheme != "fp32":
            precision.update(quantizer="XNNPACKQuantizer (PT2E), symmetric, per-channel weights",
                             activations="quantized per call" if lowered.scheme == "int8-dynamic"
                             else "calibrated on real data", candidates=lowered.candidates)
        processing = dict(job.processing)
        if SEQUENCE in bounds and "max_length" in processing:
            # The tokenizer truncates where the program ends, not at the source model's length.
            processing["max_length"] = min(int(processing["max_length"]), bounds[SEQUENCE][1])
        manifest = Manifest(task=job.task, processing=processing, graph=graph, precision=precision,
                            parity={"export": parity.to_dict()})
        if Path(source).is_dir():
            from .lora import read_merge_records

            manifest.lineage.extend(read_merge_records(Path(source)))
        manifest.add_lineage(
            "export",
            parameters={"source": recorded_source(source),
                        "task": job.task, "target": "executorch", "backend": "xnnpack",
                        "quantize": options.quantize, "max_batch": options.max_batch,
                        "sequence_length": bounds.get(SEQUENCE, (None, None))[1], "model_type": job.model_type},
            tools=tool_versions("torch", "transformers", "executorch", "torchao"),
            sources=job.sources, notes=job.notes,
        )
        finalize_manifest(folder, manifest)
    return Artifact.load(out, check_files=False)
