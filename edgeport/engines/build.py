"""``edgeport export tensorrt``: an ONNX artifact built into a TensorRT engine for this GPU.

Precision lives in the graph.  TensorRT 11 builds strongly typed networks only (the FP16 and
INT8 builder flags and calibrators are gone), and TensorRT 10 builds the same graphs with
its STRONGLY_TYPED flag; so FP16 comes from ``edgeport quantize --mode fp16`` (with its
overflow fallback) and INT8 from the Q/DQ graph of ``--mode int8-static --target gpu``
(symmetric: TensorRT takes zero points of 0 only).  ``--fp16`` / ``--int8`` run that
quantize step first.  Supported: TensorRT 10.x and 11.x.

Everything that can be decided without a GPU is decided first (the plan: profiles, the
precision, graph operators TensorRT's parser rejects, layers left in higher precision), so
``--dry-run`` shows it anywhere, and a build never starts on a graph that cannot parse.
The engine's parity against ONNX Runtime on the CPU is measured on real data before the
artifact is written; the TensorRT version, GPU and compute capability go in the manifest.
``--via onnxruntime`` keeps the ONNX graph and records ONNX Runtime's TensorRT execution
provider settings, with its engine cache built inside the artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..artifact import Artifact, copy_companions, finalize_manifest
from ..errors import AcceleratorUnavailableError, ExportError, InvalidOptionError, UnsupportedModelError
from ..manifest import Manifest
from ..outputs import ARTIFACT, OutputKind, check_output, staged_output
from ..quantize.graph import MULTIPLYING_OPS
from ..vocabulary import DEFAULT_WORKSPACE_MB
from .profiles import Profile, derive_profile
from ..workdirs import work_folder

VIAS = ("tensorrt", "onnxruntime")
# Operators ONNX Runtime's own passes produce that TensorRT's ONNX parser does not take.
UNPARSEABLE = {"DynamicQuantizeLinear": "int8-dynamic", "MatMulInteger": "int8-dynamic",
               "ConvInteger": "int8-dynamic", "QLinearConv": "QOperator INT8", "QLinearMatMul": "QOperator INT8",
               "MatMulNBits": "int4 / int8-weight-only"}


def default_timing_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeport" / "tensorrt" / "timing.cache"


@dataclass
class TensorRTOptions:
    shapes: list[str] = field(default_factory=list)
    fp16: bool = False                     # quantize --mode fp16 first
    int8: bool = False                     # quantize --mode int8-static --target gpu first (needs calib)
    calib: str | None = None
    data: str | None = None                # parity data (default: bundled real data)
    via: str = "tensorrt"
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    timing_cache: str | None = None        # None: ~/.cache/edgeport/tensorrt/timing.cache
    dry_run: bool = False
    force: bool = False

    def check(self) -> None:
        if self.via not in VIAS:
            raise InvalidOptionError(f"--via must be one of {', '.join(VIAS)} (got {self.via!r})")
        if self.fp16 and self.int8:
            raise InvalidOptionError("give --fp16 or --int8, not both")
        if self.calib and not self.int8:
            raise InvalidOptionError("--calib is for --int8 (the INT8 static quantization it runs first)")
        if self.int8 and not self.calib:
            raise InvalidOptionError("--int8 quantizes with calibration first: give --calib FILE (text, jsonl, npz "
                                     "or an image folder)")
        if not isinstance(self.workspace_mb, int) or isinstance(self.workspace_mb, bool) or self.workspace_mb < 16:
            raise InvalidOptionError(f"--workspace-mb must be a whole number >= 16 (got {self.workspace_mb!r})")

    def quantize_first(self) -> str | None:
        return "fp16" if self.fp16 else "int8-static" if self.int8 else None


@dataclass
class BuildPlan:
    """What a build would do, decided without a GPU."""

    source: str
    precision: str
    quantize_first: str | None
    profile: Profile
    via: str
    workspace_mb: int
    timing_cache: str
    higher_precision: list[str] = field(default_factory=list)    # layers that will not run in `precision`
    blocking: list[str] = field(default_factory=list)            # why the build would fail

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "precision": self.precision, "quantize_first": self.quantize_first,
                "profile": self.profile.to_dict(), "via": self.via, "workspace_mb": self.workspace_mb,
                "timing_cache": self.timing_cache, "higher_precision": self.higher_precision,
                "blocking": self.blocking}

    def lines(self) -> list[str]:
        steps = [f"source     {self.source}"]
        if self.quantize_first:
            target = " --target gpu (symmetric INT8)" if self.quantize_first == "int8-static" else ""
            steps.append(f"first      edgeport quantize --mode {self.quantize_first}{target}")
        steps.append(f"precision  {self.precision} (from the graph: strongly typed)")
        builder = "ONNX Runtime TensorRT execution provider" if self.via == "onnxruntime" else "TensorRT"
        steps.append(f"build      {builder}, workspace {self.workspace_mb} MB, timing cache {self.timing_cache}")
        steps += [f"profile    {line}" for line in self.profile.describe()]
        if self.higher_precision:
            shown = ", ".join(self.higher_precision[:12]) + (" ..." if len(self.higher_precision) > 12 else "")
            steps.append(f"kept       {len(self.higher_precision)} layers run above {self.precision}: {shown}")
        steps += [f"BLOCKING   {reason}" for reason in self.blocking]
        return steps


def plan_build(source, options: TensorRTOptions, built: Artifact | None = None) -> BuildPlan:
    """The build plan for ``source``; raises for what no build could get past.  ``built``:
    the graph that is actually built (``source`` quantized first for --fp16 / --int8): what
    TensorRT will parse and which layers stay above the precision are read from it."""
    import onnx

    options.check()
    artifact = Artifact.load(source)
    manifest = artifact.manifest
    if artifact.task == "text-generation":      # first: an LM's ONNX artifact is a decoder or GenAI folder
        raise UnsupportedModelError(f"'{source}' is a causal language model; edgeport runs those with ONNX Runtime "
                                    "GenAI (its KV cache and sampling), and TensorRT-LLM builds their engines")
    if manifest.graph["format"] != "onnx":
        raise InvalidOptionError(f"'{source}' already holds a {manifest.graph['format']} graph; build from its ONNX "
                                 "artifact")
    mode = manifest.precision.get("mode", "fp32")
    first = options.quantize_first()
    if first and mode != "fp32":
        raise InvalidOptionError(f"--{'fp16' if options.fp16 else 'int8'} quantizes an FP32 artifact first; "
                                 f"'{source}' is already {mode}: build it as it is, without the flag")
    plan = BuildPlan(str(artifact.path), {"fp16": "fp16", "int8-static": "int8"}.get(first or mode, mode), first,
                     derive_profile(manifest, options.shapes), options.via, options.workspace_mb,
                     str(options.timing_cache or default_timing_cache()))
    built = built or artifact
    model = onnx.load(str(built.model_path), load_external_data=False)
    built_mode = built.manifest.precision.get("mode", "fp32")
    plan.blocking = _blocking(model, built.manifest, built_mode, first if built is artifact else None)
    plan.higher_precision = _higher_precision(model, built.manifest, first if built is artifact and first
                                              else built_mode)
    return plan


def _blocking(model, manifest: Manifest, mode: str, first: str | None) -> list[str]:
    reasons = []
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        reasons.append(f"ONNX Runtime contrib operators TensorRT cannot parse: {', '.join(foreign)} (build from the "
                       "artifact before ONNX Runtime's fusions, or from the FP32 export)")
    unparseable = sorted({f"{n.op_type} ({UNPARSEABLE[n.op_type]})" for n in model.graph.node
                          if n.op_type in UNPARSEABLE})
    if unparseable:
        reasons.append(f"operators TensorRT's ONNX parser does not take: {', '.join(unparseable)}; build from the "
                       "FP32 artifact with --int8 --calib FILE instead (Q/DQ INT8)")
    if mode == "int8-static" and not first and manifest.precision.get("activation_type", "QInt8") != "QInt8":
        reasons.append(f"this INT8 graph was quantized for {manifest.precision.get('target')} (unsigned activations "
                       "with zero points); TensorRT takes symmetric INT8 only: quantize the FP32 artifact with "
                       "--target gpu, or pass it here with --int8 --calib FILE")
    return reasons


def _higher_precision(model, manifest: Manifest, mode: str) -> list[str]:
    """Weight layers the graph leaves above the asked precision (TensorRT runs them as typed)."""
    if mode == "fp16":
        return list(manifest.precision.get("kept_fp32_nodes") or [])
    if mode != "int8-static":
        return []
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    initializers = {i.name for i in model.graph.initializer}
    return [n.name or n.op_type for n in model.graph.node if n.op_type in MULTIPLYING_OPS
            and len(n.input) > 1 and n.input[1] in initializers and n.input[1] not in dequantized]


def export_tensorrt(source, out, options: TensorRTOptions, progress: Callable[[str], None] | None = None
                    ) -> Artifact | BuildPlan:
    """Build ``source`` (an ONNX artifact) for this GPU; with ``dry_run``, only the plan."""
    say = progress or (lambda message: None)
    options.check()
    if not options.dry_run:
        check_output(out, options.force, (source,), ARTIFACT)
    plan = plan_build(source, options)             # what the source alone decides, before any work
    if plan.blocking and not plan.quantize_first:
        if options.dry_run:
            return plan
        raise UnsupportedModelError("TensorRT cannot build this graph: " + "; ".join(plan.blocking))
    environment = None
    if not options.dry_run:
        from ..runtime.tensorrt import engine_environment

        if options.via == "tensorrt":
            check_timing_cache(Path(plan.timing_cache), options.force, source)
        else:             # first: what this route needs (onnxruntime-gpu) before what both need
            _require_ort_tensorrt()
        environment = engine_environment()           # no GPU or no TensorRT: stop before any work
    with work_folder("edgeport-trt-") as work_dir:
        origin = built_from = Artifact.load(source)
        if plan.quantize_first:
            built_from = _quantize_first(source, Path(work_dir) / "quantized", options, say)
            plan = plan_build(source, options, built_from)      # planned on the graph that is built
        if options.dry_run:
            return plan
        if plan.blocking:
            raise UnsupportedModelError("TensorRT cannot build this graph: " + "; ".join(plan.blocking))
        record = engine_record(plan, environment, origin, options.via)
        if options.via == "onnxruntime":
            from .ort import write_ort_tensorrt

            return write_ort_tensorrt(built_from, out, plan, record, options, say)
        say(f"building a TensorRT {environment.tensorrt} engine for {environment.gpu}...")
        engine = build_engine(built_from.model_path, plan.profile, options.workspace_mb, Path(plan.timing_cache), say)
        return _write_engine(built_from, out, engine, plan, record, options, say)


def _require_ort_tensorrt() -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise AcceleratorUnavailableError("--via onnxruntime needs ONNX Runtime's TensorrtExecutionProvider, which "
                                          f"this onnxruntime lacks ({', '.join(ort.get_available_providers())}); "
                                          "install onnxruntime-gpu and TensorRT, or build with --via tensorrt")


def _quantize_first(source, dest: Path, options: TensorRTOptions, say) -> Artifact:
    from ..quantize import QuantizeOptions, quantize

    mode = options.quantize_first()
    say(f"quantizing to {mode} first (precision lives in the graph for a strongly typed build)...")
    return quantize(source, dest, QuantizeOptions(mode=mode, target="gpu", calib=options.calib, data=options.data),
                    progress=say)


def build_engine(model_path: Path, profile: Profile, workspace_mb: int, timing_cache: Path, say) -> bytes:
    """A serialized, strongly typed engine with one optimisation profile; the timing cache is
    read first and written back, so later builds of similar layers skip their tactic timing."""
    from ..runtime.tensorrt import import_tensorrt

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejected '{model_path}': {'; '.join(errors[:5])}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    optimisation = builder.create_optimization_profile()
    for item in profile.inputs:
        optimisation.set_shape(item.name, item.min, item.opt, item.max)
    if config.add_optimization_profile(optimisation) < 0:
        raise ExportError("TensorRT refused the optimisation profile " + "; ".join(profile.describe())
                          + " (an input the network does not have, or min > opt > max); fix --shapes")
    _use_timing_cache(config, timing_cache, say)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT could not build an engine for this graph and profile (see its messages above); "
                          "try a narrower --shapes range or a larger --workspace-mb")
    _save_timing_cache(config.get_timing_cache(), timing_cache)
    say(f"engine built; timing cache saved to {timing_cache}")
    return bytes(serialized)


def _use_timing_cache(config, path: Path, say) -> None:
    """Start from the timing cache at ``path``; one written by another TensorRT version or
    GPU is refused by TensorRT (set_timing_cache returns False), and the build starts from
    an empty cache instead, which then replaces it."""
    cache_bytes = path.read_bytes() if path.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False):
        return
    if not cache_bytes:
        raise ExportError("TensorRT could not start an empty timing cache")
    say(f"the timing cache {path} was written by another TensorRT version or GPU; starting a fresh one")
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise ExportError("TensorRT could not start an empty timing cache")


def _save_timing_cache(cache, path: Path) -> None:
    """Write the cache (atomically: two builds never leave half a cache) and its record, which
    marks it as edgeport's own: the next build may replace it without --force."""
    payload = bytes(cache.serialize())
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    temporary.write_bytes(payload)
    os.replace(temporary, path)
    _timing_record(path).write_text(json.dumps({"written_by": "edgeport export tensorrt",
                                                "sha256": hashlib.sha256(payload).hexdigest()}) + "\n")


def _timing_record(path: Path) -> Path:
    return path.with_name(path.name + ".edgeport.json")


def _is_our_timing_cache(path: Path) -> bool:
    """A timing cache edgeport wrote and nobody changed since: its record names its digest."""
    try:
        record = json.loads(_timing_record(path).read_text())
        return path.is_file() and record.get("sha256") == hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError, AttributeError):
        return False


TIMING_CACHE = OutputKind("TensorRT timing cache written by edgeport", False, _is_our_timing_cache)


def check_timing_cache(path: Path, force: bool, source) -> Path:
    """The timing cache is read and rewritten by every build: it may be edgeport's own earlier
    cache, never a file of someone else's (the input model, say) without --force, and never
    inside the input artifact."""
    return check_output(path, force or _is_our_timing_cache(path), (source,), TIMING_CACHE, "--timing-cache")


def engine_record(plan: BuildPlan, environment, origin: Artifact, via: str) -> dict[str, Any]:
    """What the engine is tied to and how to rebuild it: ``origin`` is the artifact the user
    named (with --fp16 / --int8 the engine is built from its quantized copy, which is not kept)."""
    flags = {"fp16": " --fp16", "int8-static": " --int8"}.get(plan.quantize_first or "", "")
    return {**environment.to_dict(), "via": via, "profile": plan.profile.to_dict(), "workspace_mb": plan.workspace_mb,
            "built_from": str(origin.path), "built_from_manifest": origin.manifest_sha256,
            "rebuild": f"edgeport export tensorrt {origin.path}{flags}", "strongly_typed": True}


def add_engine_lineage(manifest: Manifest, plan: BuildPlan, record: dict[str, Any], options: TensorRTOptions) -> None:
    manifest.add_lineage("export-tensorrt", parameters={"via": record["via"], "shapes": list(options.shapes),
                                                        "quantize_first": plan.quantize_first,
                                                        "workspace_mb": plan.workspace_mb},
                         tools={"tensorrt": record["tensorrt"]},
                         sources={"input_artifact": record["built_from"],
                                  "input_manifest": record["built_from_manifest"]})


def _write_engine(built_from: Artifact, out, engine: bytes, plan: BuildPlan, record: dict[str, Any],
                  options: TensorRTOptions, say) -> Artifact:
    from ..runtime.tensorrt import TensorRTRunner

    manifest = built_from.manifest
    with staged_output(out, options.force, (built_from.path,), ARTIFACT) as folder:
        (folder / "model.plan").write_bytes(engine)
        copy_companions(built_from, folder)
        graph = {k: v for k, v in manifest.graph.items() if k not in ("opset", "external_data")}
        graph.update(format="tensorrt", file="model.plan", engine=record)
        new = Manifest(task=manifest.task, processing=manifest.processing, graph=graph,
                       precision=dict(manifest.precision), parity=dict(manifest.parity),
                       lineage=list(manifest.lineage))
        say("measuring the engine against ONNX Runtime on the CPU...")
        with TensorRTRunner(folder / "model.plan", new, str(folder)) as runner:
            new.parity["tensorrt"] = engine_parity(runner, built_from, plan, options.data)
        add_engine_lineage(new, plan, record, options)
        finalize_manifest(folder, new)
    return Artifact.load(out, check_files=False)


def engine_parity(runner, reference: Artifact, plan: BuildPlan, data: str | None) -> dict:
    """The engine against the ONNX graph it was built from, run by ONNX Runtime on the CPU,
    on real data batched within the engine's profile; fails the build below the precision's
    budget (FP16: cosine >= 0.999; INT8: top-1 agreement >= 0.98 for classifiers, cosine
    >= 0.99 otherwise)."""
    from ..data import examples_for, fit_to_range
    from ..parity import ParityBudget, measure, reference_outputs
    from ..runtime.onnxrt import OnnxRuntimeRunner

    budget = {"fp32": ParityBudget(min_cosine=0.9999), "fp16": ParityBudget(min_cosine=0.999)}.get(
        plan.precision, ParityBudget(min_top1_agreement=0.98) if reference.task.endswith("classification")
        else ParityBudget(min_cosine=0.99))
    examples = fit_to_range(examples_for(reference, data, role="eval"), plan.profile.shape_range())
    with OnnxRuntimeRunner(reference.model_path, inputs=reference.manifest.inputs) as cpu:
        expected = reference_outputs(cpu, examples)
    report = measure(runner, expected, examples, reference.task, budget,
                     reference_name=f"ONNX Runtime CPU on '{reference.path}'")
    report.raise_for_failure("the TensorRT engine")
    return report.to_dict()
