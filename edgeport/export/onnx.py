"""``edgeport export onnx``: export through the first route that yields a graph matching
PyTorch on real inputs, at other batch sizes, lengths and image sizes than the ones it
was traced with.

Routes, in order (``--exporter auto``):

1. ``torchscript``: ``torch.onnx.export(dynamo=False)``.  Measured here on
   all-MiniLM-L6-v2: 1.4-1.9 s against 10-13 s for dynamo, same accuracy, and the graph
   ONNX Runtime's transformer optimizer fuses.
2. ``dynamo``: ``torch.onnx.export(dynamo=True)`` with ``torch.export`` dynamic shapes,
   for models tracing cannot capture.
3. ``static``: torchscript with every shape fixed, the last resort.

Each route is tried with the most general shape variant first (a vision network with
dynamic height and width, then at its fixed size).  Every graph passes ``onnx.checker``
and shape inference, then runs in ONNX Runtime on the validation batches; the first that
matches wins, and the lineage records why the others were passed over.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..artifact import Artifact, finalize_manifest, save_onnx
from ..errors import EdgeportError, ExportError, InvalidOptionError, ModelInputError, ParityError, require
from ..golden import save_golden
from ..manifest import GOLDEN_NAME, Manifest, tool_versions
from ..outputs import ARTIFACT, check_output, staged_output
from ..parity import ParityReport, compare_outputs
from ..runtime.onnxrt import OnnxRuntimeRunner
from ..vocabulary import DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_RTOL, DEFAULT_SEQUENCE_LENGTH, EXPORTERS
from .prepare import CallableSource, ExportJob, HfSource, run_module
from .quiet import quiet_torch_onnx
from .registry import check_task, detect_task
from .source import is_callable_source, is_keras_file, parse_input_spec, read_config, recorded_source
from ..workdirs import work_folder

ROUTES = ("torchscript", "dynamo", "static")


@dataclass
class ExportOptions:
    task: str | None = None
    opset: int = DEFAULT_OPSET
    static_shapes: bool = False
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH     # the fixed sequence length with static_shapes
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    validate: bool = True
    force: bool = False
    allow_pickle: bool = False
    exporter: str = "auto"
    inputs: list[str] = field(default_factory=list)      # module:callable input specs
    output_names: list[str] = field(default_factory=list)
    external_data: bool | None = None   # None: only when the model is too big for one file
    precision: str = "fp32"             # causal LMs: the builder's fp32 | fp16 | int4
    route: str = "auto"                 # causal LMs: auto | genai (the builder) | onnx (edgeport's own export)
    runtime_adapters: dict[str, str] = field(default_factory=dict)   # causal LMs: name -> peft adapter folder

    def check(self) -> None:
        import math

        if self.exporter not in EXPORTERS:
            raise InvalidOptionError(f"--exporter must be one of {', '.join(EXPORTERS)} (got '{self.exporter}')")
        if not isinstance(self.opset, int) or not 7 <= self.opset <= 23:
            raise InvalidOptionError(f"--opset {self.opset} is out of range; use 7 to 23 (default {DEFAULT_OPSET})")
        for name, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidOptionError(f"{name} must be a finite number >= 0 (got {value!r})")
        if not isinstance(self.sequence_length, int) or self.sequence_length < 1:
            raise InvalidOptionError("--sequence-length must be a whole number >= 1")
        check_task(self.task)


@dataclass
class RouteResult:
    route: str
    variant: str
    ok: bool
    seconds: float
    reason: str = ""
    parity: ParityReport | None = None


def export_onnx(source: str | os.PathLike, out: str | os.PathLike, options: ExportOptions | None = None,
                progress=None, extra_inputs: tuple = ()) -> Artifact:
    """Export ``source`` (HF folder, ``.keras`` file or ``module:callable``) to an ONNX artifact at
    ``out``.  ``extra_inputs``: paths the output must not overlap besides the source (adapters)."""
    options = options or ExportOptions()
    options.check()
    source_text = str(source)
    if is_keras_file(source_text) or (Path(source_text) / "saved_model.pb").is_file():
        from .keras import export_keras

        _refuse_builder_precision(options)
        return export_keras(source, out, options, progress=progress)
    callable_source = is_callable_source(source_text)
    check_output(out, options.force, () if callable_source else (source_text, *extra_inputs), ARTIFACT)
    require("torch", "export")
    require("onnx", "export")
    say = progress or (lambda message: None)
    if (options.inputs or options.output_names) and not callable_source:
        raise InvalidOptionError(f"{'--input' if options.inputs else '--output-name'} is only for module:callable "
                                 "sources; a model folder declares its inputs and outputs")
    if not callable_source and _is_causal_lm(Path(source_text), options.task):
        from .llm import export_causal_lm

        return export_causal_lm(Path(source_text), out, options, progress=say,
                                runtime_adapters=options.runtime_adapters or None)
    if options.runtime_adapters:
        raise InvalidOptionError("--runtime-adapter is for causal LMs (task text-generation); merge encoder "
                                 "adapters with --adapter")
    _refuse_builder_precision(options)
    with work_folder("edgeport-export-") as work_dir:
        work = Path(work_dir)
        if callable_source:
            model = CallableSource(source_text, [parse_input_spec(s) for s in options.inputs], options.output_names,
                                   options.task)
        else:
            model = HfSource(Path(source_text), options.task, options.allow_pickle, options.sequence_length, work)
        plan = _plan(options, model.variants(options.static_shapes))
        job = model.job(plan[0][1])
        say(f"task {job.task}; inputs {', '.join(job.input_names)}; outputs {', '.join(job.output_names)}")
        attempts: list[RouteResult] = []
        references: dict[str, list] = {}
        for route, variant in plan:
            job = model.job(variant)
            if variant not in references:
                references[variant] = [dict(zip(job.output_names, (o.detach().float().numpy() for o in
                                                                    run_module(job.module, job.input_names, b))))
                                       for b in job.validation_batches]
            label = route if len(plan) == len(_routes(options)) else f"{route} ({variant})"
            say(f"exporting with {label}...")
            result, model_file = _try_route(route, job, options, references[variant], work / f"{route}-{variant}")
            attempts.append(result)
            if result.ok:
                return _write_artifact(out, job, options, source_text, result, model_file, references[variant],
                                       attempts, extra_inputs)
            say(f"  {label} passed over: {result.reason}")
        _raise_all_failed(attempts)


def _refuse_builder_precision(options: ExportOptions) -> None:
    if options.route != "auto":
        raise InvalidOptionError(f"--route {options.route} picks how a causal LM is exported (task text-generation)")
    if options.precision != "fp32":
        raise InvalidOptionError(f"--precision {options.precision} is for causal LMs (task text-generation), which are "
                                 "built in that precision; quantize this model after export with 'edgeport quantize "
                                 "ARTIFACT --mode int8-dynamic|int8-static|fp16'")


def _is_causal_lm(folder: Path, task: str | None) -> bool:
    if task is not None:
        return task == "text-generation"
    config = read_config(folder)
    architectures = config.get("architectures")
    return detect_task(SimpleNamespace(architectures=architectures if isinstance(architectures, list) else [])) \
        == "text-generation"


def _routes(options: ExportOptions) -> list[str]:
    if options.static_shapes:
        return ["static"]
    if options.exporter != "auto":
        return [options.exporter]
    return list(ROUTES)


def _plan(options: ExportOptions, variants: list[str]) -> list[tuple[str, str]]:
    """(route, shape variant) pairs in the order they are tried."""
    plan = []
    for route in _routes(options):
        if route == "static":
            plan.append((route, "static"))
        else:
            plan.extend((route, variant) for variant in variants if variant != "static")
    return plan


def _try_route(route: str, job: ExportJob, options: ExportOptions, references, folder: Path):
    folder.mkdir(parents=True)
    model_file = folder / "model.onnx"
    start = time.perf_counter()
    try:
        _run_exporter(route, job, options, model_file)
        job.module.eval()   # the legacy exporter can leave modules in training mode
        _check_graph(model_file)
        parity = None
        if options.validate:
            parity = _validate(model_file, job, references, options)
        else:
            OnnxRuntimeRunner(model_file).close()   # at least prove ONNX Runtime loads it
    except ParityError as exc:
        return RouteResult(route, job.variant, False, time.perf_counter() - start, str(exc)), None
    except ModelInputError as exc:   # the graph fails on edgeport's own check inputs: a shape tracing froze
        return RouteResult(route, job.variant, False, time.perf_counter() - start,
                           f"the graph does not run on the check inputs: {exc}"), None
    except EdgeportError:
        raise
    except Exception as exc:  # any exporter failure (torch.onnx raises whatever its passes raise) means: next route
        return RouteResult(route, job.variant, False, time.perf_counter() - start, _root_cause(exc)), None
    return RouteResult(route, job.variant, True, time.perf_counter() - start, parity=parity), model_file


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's first line: exporters wrap the real reason in boilerplate."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:500]


def _run_exporter(route: str, job: ExportJob, options: ExportOptions, model_file: Path) -> None:
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(job.trace_inputs[n])) for n in job.input_names)
    common = dict(input_names=job.input_names, output_names=job.output_names)
    with quiet_torch_onnx():
        if route == "dynamo":
            require("onnxscript", "export")
            dims: dict[str, object] = {}
            dynamic = {name: {axis: dims.setdefault(label, torch.export.Dim(label))
                              for axis, label in job.input_axes.get(name, {}).items()} or None
                       for name in job.input_names}
            torch.onnx.export(job.module, args, str(model_file), dynamo=True, external_data=True, verbose=False,
                              # the wrapper's forward is forward(*args): one entry holding all inputs
                              dynamic_shapes=(tuple(dynamic[n] for n in job.input_names),),
                              opset_version=max(options.opset, 18), **common)
            _rename_symbolic_dims(model_file, job)
        else:
            axes = {} if route == "static" else {**job.input_axes, **job.output_axes}
            axes = {name: a for name, a in axes.items() if a}
            torch.onnx.export(job.module, args, str(model_file), dynamo=False, dynamic_axes=axes or None,
                              opset_version=options.opset, do_constant_folding=True, **common)


def _rename_symbolic_dims(model_file: Path, job: ExportJob) -> None:
    """Name input and output dims as declared (dynamo invents names such as 's0')."""
    import onnx

    model = onnx.load(str(model_file))
    mapping = {}
    for value in model.graph.input:
        for axis, label in job.input_axes.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            if dim.dim_param and dim.dim_param != label:
                mapping[dim.dim_param] = label
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]
    save_onnx(model, model_file)


def _check_graph(model_file: Path) -> None:
    import onnx

    onnx.checker.check_model(str(model_file), full_check=True)   # includes strict shape inference


def _validate(model_file: Path, job: ExportJob, references, options: ExportOptions) -> ParityReport:
    """Run every validation batch in ONNX Runtime; parity of the first is the one recorded.

    Later batches exist to prove the dynamic axes (other batch size, length or image
    size); they must pass the same tolerance.
    """
    thresholds = {"atol": options.atol, "rtol": options.rtol}
    first = None
    with OnnxRuntimeRunner(model_file) as runner:
        for index, (feeds, reference) in enumerate(zip(job.validation_batches, references)):
            candidate = _run_in_chunks(runner, feeds, job)
            data = job.validation_data if index == 0 else f"extra batch {_shapes(feeds)}"
            report = compare_outputs(reference, candidate, task=job.task, token_mask=feeds.get("attention_mask"),
                                     data=data, reference_name="PyTorch", thresholds=thresholds)
            report.raise_for_failure("the exported ONNX model")
            first = first or report
    return first


def _shapes(feeds) -> str:
    return ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())


def _run_in_chunks(runner: OnnxRuntimeRunner, feeds, job: ExportJob) -> dict[str, np.ndarray]:
    """A static graph takes its traced batch size only; feed it that many rows at a time."""
    batch = len(next(iter(feeds.values())))
    step = len(next(iter(job.trace_inputs.values()))) if job.variant == "static" else batch
    if batch % step:
        step = 1 if job.variant == "static" else batch
    parts = []
    for start in range(0, batch, step):
        chunk = {n: np.ascontiguousarray(feeds[n][start:start + step]) for n in job.input_names}
        parts.append(runner.run(chunk))
    return {name: np.concatenate([p[name] for p in parts]) for name in job.output_names}


def _raise_all_failed(attempts: list[RouteResult]) -> None:
    reasons = "; ".join(f"{a.route} ({a.variant}): {a.reason}" for a in attempts)
    if all("does not match" in a.reason for a in attempts):
        raise ParityError(f"the exported model does not match PyTorch on any route ({reasons}). "
                          "Raise --atol if this difference is acceptable; nothing was written")
    raise ExportError(f"every export route failed ({reasons}); nothing was written")


def graph_io(model_file: Path, limits: dict[str, dict] | None = None) -> tuple[list[dict], list[dict], int]:
    """Inputs and outputs as manifest tensor specs (with the runtime's limits), and the opset."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)

    def describe(values, with_limits):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
            spec = {"name": value.name, "dtype": dtype, "shape": shape}
            if with_limits and limits and value.name in limits:
                spec.update(limits[value.name])
            out.append(spec)
        return out

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return describe(model.graph.input, True), describe(model.graph.output, False), opset


def _write_artifact(out, job: ExportJob, options: ExportOptions, source: str, result: RouteResult,
                    model_file: Path, references, attempts: list[RouteResult], extra_inputs: tuple) -> Artifact:
    import onnx

    inputs_to_protect = () if is_callable_source(source) else (source, *extra_inputs)
    with staged_output(out, options.force, inputs_to_protect, ARTIFACT) as folder:
        model = onnx.load(str(model_file))
        save_onnx(model, folder / "model.onnx", options.external_data)
        del model
        save_golden(folder / GOLDEN_NAME, job.validation_batches[0], references[0])
        for name, path in job.copy_files.items():
            shutil.copyfile(path, folder / name)
        inputs, outputs, opset = graph_io(folder / "model.onnx", job.input_limits)
        if opset != options.opset:
            job.notes.append(f"--opset {options.opset} was asked; the {result.route} exporter wrote opset {opset} "
                             "(torch's dynamo exporter writes 18 at least)")
        graph = {"format": "onnx", "file": "model.onnx", "opset": opset, "inputs": inputs, "outputs": outputs,
                 "static_shapes": result.route == "static",
                 "external_data": (folder / "model.onnx.data").exists()}
        if job.fixed_size_reason and "image" in job.processing:
            graph["fixed_size_reason"] = job.fixed_size_reason
        manifest = Manifest(task=job.task, processing=job.processing, graph=graph,
                            precision={"mode": "fp32", "kept_fp32_nodes": [], "calibration": None},
                            parity={"export": result.parity.to_dict()} if result.parity else {})
        if not is_callable_source(source):
            from .lora import read_merge_records

            manifest.lineage.extend(read_merge_records(Path(source)))
        manifest.add_lineage(
            "export",
            parameters={"source": recorded_source(source),
                        "task": job.task, "opset": options.opset, "exporter": result.route,
                        "shape_variant": job.variant, "static_shapes": options.static_shapes, "atol": options.atol,
                        "rtol": options.rtol, "validated": options.validate, "model_type": job.model_type},
            tools=tool_versions("torch", "transformers", "onnx", "onnxruntime", "onnxscript"),
            sources=job.sources,
            routes=[{"route": a.route, "variant": a.variant, "ok": a.ok, "seconds": round(a.seconds, 2),
                     **({"reason": a.reason} if a.reason else {})} for a in attempts],
            notes=job.notes,
        )
        finalize_manifest(folder, manifest)
    return Artifact.load(out, check_files=False)   # finalize_manifest hashed these very files
