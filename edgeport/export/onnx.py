"""``edgeport export onnx``: export through the first route that yields a graph matching
PyTorch on real inputs, at other batch sizes and lengths than the ones it was traced with.

Routes, in order (``--exporter auto``):

1. ``torchscript``: ``torch.onnx.export(dynamo=False)``.  Measured here on
   all-MiniLM-L6-v2: 1.4-1.9 s against 10-13 s for dynamo, same accuracy, and the graph
   ONNX Runtime's transformer optimizer fuses.
2. ``dynamo``: ``torch.onnx.export(dynamo=True)`` with ``torch.export`` dynamic shapes,
   for models tracing cannot capture.
3. ``static``: torchscript with every shape fixed, the last resort.

Every route's graph passes ``onnx.checker`` and shape inference, then runs in ONNX Runtime
on the validation batches; the first that matches wins, and the lineage records why the
others were passed over.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import GOLDEN_NAME, Artifact, Manifest, check_output_path, finalize_manifest, staging_folder, tool_versions
from ..bench.parity import ParityReport, compare_outputs
from ..errors import EdgeportError, ExportError, InvalidOptionError, ParityError, require
from ..golden import save_golden
from ..runtime.backends import cpu_session
from .prepare import ExportJob, prepare_callable, prepare_hf
from .source import is_callable_source, parse_input_spec

DEFAULT_OPSET = 17
EXTERNAL_DATA_THRESHOLD = 1_800_000_000   # protobuf's hard limit is 2 GiB
ROUTES = ("torchscript", "dynamo", "static")


@dataclass
class ExportOptions:
    task: str | None = None
    opset: int = DEFAULT_OPSET
    static_shapes: bool = False
    sequence_length: int = 128          # the fixed sequence length with static_shapes
    atol: float = 1e-4
    rtol: float = 1e-3
    validate: bool = True
    force: bool = False
    allow_pickle: bool = False
    exporter: str = "auto"
    inputs: list[str] = field(default_factory=list)      # module:callable input specs
    output_names: list[str] = field(default_factory=list)
    external_data: bool | None = None   # None: only when the model is too big for one file


@dataclass
class RouteResult:
    route: str
    ok: bool
    seconds: float
    reason: str = ""
    parity: ParityReport | None = None


def export_onnx(source: str | os.PathLike, out: str | os.PathLike, options: ExportOptions | None = None,
                progress=None) -> Artifact:
    """Export ``source`` (HF folder or ``module:callable``) to an ONNX artifact at ``out``."""
    options = options or ExportOptions()
    _check_options(options)
    check_output_path(out, options.force)
    require("torch", "export")
    require("onnx", "export")
    say = progress or (lambda message: None)

    source_text = str(source)
    if options.inputs and not is_callable_source(source_text):
        raise InvalidOptionError("--input is only for module:callable sources; a model folder declares its inputs")
    specs = [parse_input_spec(s) for s in options.inputs]

    def prepare(static: bool) -> ExportJob:
        if is_callable_source(source_text):
            return prepare_callable(source_text, specs, options.output_names, static)
        return prepare_hf(Path(source), options.task, options.allow_pickle, static, options.sequence_length)

    jobs = {False: prepare(options.static_shapes)}
    job = jobs[False]
    say(f"task {job.task}; inputs {', '.join(job.input_names)}; outputs {', '.join(job.output_names)}")
    routes = _routes(options)
    attempts: list[RouteResult] = []
    references: dict[bool, list] = {}
    with tempfile.TemporaryDirectory(prefix="edgeport-export-") as work:
        winner = None
        for route in routes:
            # The static fallback needs inputs of the fixed shapes (batch 1, --sequence-length).
            static = route == "static" and not options.static_shapes
            if static and static not in jobs:
                jobs[static] = prepare(True)
            job = jobs[static]
            if static not in references:
                references[static] = [_torch_outputs(job, batch) for batch in job.validation_batches]
            say(f"exporting with {route}...")
            result, model_file = _try_route(route, job, options, references[static], Path(work) / route)
            attempts.append(result)
            if result.ok:
                winner = (result, model_file)
                break
            say(f"  {route} passed over: {result.reason}")
        if winner is None:
            _raise_all_failed(attempts)
        result, model_file = winner
        return _write_artifact(out, job, options, source_text, result, model_file, references[static], attempts)


def _check_options(options: ExportOptions) -> None:
    if options.exporter not in ("auto",) + ROUTES:
        raise InvalidOptionError(f"--exporter must be auto, {', '.join(ROUTES)} (got '{options.exporter}')")
    if not 7 <= options.opset <= 23:
        raise InvalidOptionError(f"--opset {options.opset} is out of range; use 7 to 23 (default {DEFAULT_OPSET})")
    if options.atol < 0 or options.rtol < 0:
        raise InvalidOptionError("--atol and --rtol must be >= 0")
    if options.sequence_length < 1:
        raise InvalidOptionError("--sequence-length must be >= 1")


def _routes(options: ExportOptions) -> list[str]:
    if options.static_shapes:
        return ["static"]
    if options.exporter != "auto":
        return [options.exporter]
    return list(ROUTES)


def _torch_outputs(job: ExportJob, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    job.module.eval()
    with torch.no_grad():
        outs = job.module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in job.input_names])
    return {name: out.detach().float().numpy() for name, out in zip(job.output_names, outs)}


@contextlib.contextmanager
def _quiet():
    """torch.onnx is chatty (deprecations, progress emojis); keep the terminal for our messages."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


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
            parity = _validate(model_file, job, references, options, static=route == "static")
        else:
            cpu_session(model_file)   # at least prove ONNX Runtime loads it
    except ParityError as exc:
        return RouteResult(route, False, time.perf_counter() - start, str(exc)), None
    except EdgeportError:
        raise
    except Exception as exc:  # an exporter's failure is a reason to try the next route
        return RouteResult(route, False, time.perf_counter() - start, _root_cause(exc)), None
    return RouteResult(route, True, time.perf_counter() - start, parity=parity), model_file


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
    with _quiet():
        if route == "dynamo":
            require("onnxscript", "export")
            dims: dict[str, object] = {}
            dynamic = {}
            for name in job.input_names:
                dynamic[name] = {axis: dims.setdefault(label, torch.export.Dim(label))
                                 for axis, label in job.input_axes.get(name, {}).items()} or None
            torch.onnx.export(job.module, args, str(model_file), dynamo=True, external_data=True,
                              # the wrapper's forward is forward(*args): one entry holding all inputs
                              dynamic_shapes=(tuple(dynamic[n] for n in job.input_names),),
                              opset_version=max(options.opset, 18), **common)
        else:
            axes = {} if route == "static" else {**job.input_axes, **job.output_axes}
            axes = {name: a for name, a in axes.items() if a}
            torch.onnx.export(job.module, args, str(model_file), dynamo=False, dynamic_axes=axes or None,
                              opset_version=options.opset, do_constant_folding=True, **common)
        if route == "dynamo":
            _rename_symbolic_dims(model_file, job)


def _rename_symbolic_dims(model_file: Path, job: ExportJob) -> None:
    """Name output dims like the inputs they follow (dynamo invents names such as 's0')."""
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
    _save_onnx(model, model_file, external=None)


def _save_onnx(model, model_file: Path, external: bool | None) -> None:
    import onnx

    data_file = model_file.with_name(model_file.name + ".data")
    if data_file.exists():
        data_file.unlink()
    large = model.ByteSize() > EXTERNAL_DATA_THRESHOLD if external is None else external
    onnx.save_model(model, str(model_file), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=data_file.name, size_threshold=1024)


def _check_graph(model_file: Path) -> None:
    import onnx

    onnx.checker.check_model(str(model_file), full_check=True)   # includes strict shape inference


def _validate(model_file: Path, job: ExportJob, references, options: ExportOptions, static: bool) -> ParityReport:
    """Run every validation batch in ONNX Runtime; parity of the first is the one recorded.

    Later batches exist to prove the dynamic axes (other batch size and length); they
    must pass the same tolerance.
    """
    session = cpu_session(model_file)
    thresholds = {"atol": options.atol, "rtol": options.rtol}
    first = None
    for index, (feeds, reference) in enumerate(zip(job.validation_batches, references)):
        candidate = _run_in_chunks(session, feeds, job, static)
        report = compare_outputs(reference, candidate, task=job.task, token_mask=feeds.get("attention_mask"),
                                 data=job.validation_data if index == 0 else f"extra batch {dict((k, v.shape) for k, v in feeds.items())}",
                                 reference_name="PyTorch", thresholds=thresholds)
        report.raise_for_failure("the exported ONNX model")
        first = first or report
    return first


def _run_in_chunks(session, feeds, job: ExportJob, static: bool) -> dict[str, np.ndarray]:
    """A static graph takes its traced batch size only; feed it that many rows at a time."""
    batch = len(next(iter(feeds.values())))
    step = len(next(iter(job.trace_inputs.values()))) if static else batch
    if batch % step:
        step = 1 if static else batch
    parts = []
    for start in range(0, batch, step):
        chunk = {n: np.ascontiguousarray(feeds[n][start:start + step]) for n in job.input_names}
        parts.append(session.run(job.output_names, chunk))
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(job.output_names)}


def _raise_all_failed(attempts: list[RouteResult]) -> None:
    reasons = "; ".join(f"{a.route}: {a.reason}" for a in attempts)
    if all("does not match" in a.reason for a in attempts):
        raise ParityError(f"the exported model does not match PyTorch on any route ({reasons}). "
                          "Raise --atol if this difference is acceptable; nothing was written")
    raise ExportError(f"every export route failed ({reasons}); nothing was written")


def _graph_io(model_file: Path) -> tuple[list[dict], list[dict], int]:
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)

    def describe(values):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
            out.append({"name": value.name, "dtype": dtype, "shape": shape})
        return out

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return describe(model.graph.input), describe(model.graph.output), opset


def _write_artifact(out, job: ExportJob, options: ExportOptions, source: str, result: RouteResult,
                    model_file: Path, references, attempts: list[RouteResult]) -> Artifact:
    import onnx

    with staging_folder(out, options.force) as folder:
        model = onnx.load(str(model_file))
        _save_onnx(model, folder / "model.onnx", options.external_data)
        del model
        save_golden(folder / GOLDEN_NAME, job.validation_batches[0], references[0])
        for name, path in job.copy_files.items():
            shutil.copyfile(path, folder / name)
        inputs, outputs, opset = _graph_io(folder / "model.onnx")
        manifest = Manifest(
            task=job.task,
            processing=job.processing,
            graph={"format": "onnx", "file": "model.onnx", "opset": opset, "inputs": inputs,
                   "outputs": outputs, "static_shapes": result.route == "static",
                   "external_data": (folder / "model.onnx.data").exists()},
            precision={"mode": "fp32", "kept_fp32_nodes": [], "calibration": None},
            parity={"export": result.parity.to_dict()} if result.parity else {},
        )
        if not is_callable_source(source):
            from .lora import read_merge_record

            record = read_merge_record(Path(source))
            if record:
                manifest.lineage.append(record)
        manifest.add_lineage(
            "export",
            parameters={"source": source, "task": job.task, "opset": options.opset, "exporter": result.route,
                        "static_shapes": options.static_shapes, "atol": options.atol, "rtol": options.rtol,
                        "validated": options.validate, "model_type": job.model_type},
            tools=tool_versions("torch", "transformers", "onnx", "onnxruntime", "onnxscript"),
            sources=job.sources,
            routes=[{"route": a.route, "ok": a.ok, "seconds": round(a.seconds, 2),
                     **({"reason": a.reason} if a.reason else {})} for a in attempts],
            notes=job.notes,
        )
        finalize_manifest(folder, manifest)
    return Artifact.load(out, verify=False)   # finalize_manifest hashed these very files
