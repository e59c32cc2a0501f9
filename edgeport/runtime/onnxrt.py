"""ONNX Runtime as a runner.  Session options are built here and nowhere else: the
runtime's sessions, the quiet CPU sessions that checks and comparisons use, and the
graph-inspection sessions of the quantizers all come from ``SessionSettings``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ArtifactError, DeviceError, InvalidOptionError, ModelInputError
from ..manifest import TensorSpec
from ..vocabulary import DEVICES
from .runner import Runner

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
OPTIMIZATIONS = ("none", "basic", "extended", "all")


THREADS_PER_CORE = 8


def max_threads() -> int:
    """More threads than this only oversubscribes the cores (and a huge count never starts)."""
    return max(16, THREADS_PER_CORE * (os.cpu_count() or 1))


@dataclass(frozen=True)
class SessionSettings:
    device: str = "auto"
    threads: int | None = None            # intra-op threads; None lets ONNX Runtime decide
    inter_op_threads: int | None = None
    optimization: str = "all"             # none | basic | extended | all
    memory_arena: bool = True
    spinning: bool = True                 # off while several sessions share few cores

    def __post_init__(self):
        if self.device not in DEVICES:
            raise DeviceError(f"device must be one of {', '.join(DEVICES)} (got {self.device!r})")
        for name in ("threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidOptionError(f"{name} must be a whole number >= 1 (got {value!r})")
            if value is not None and value > max_threads():
                raise InvalidOptionError(f"{name} {value} is more than this machine can use (at most {max_threads()}: "
                                         f"{THREADS_PER_CORE} per core); ONNX Runtime starts one thread per count")
        if self.optimization not in OPTIMIZATIONS:
            raise InvalidOptionError(f"optimization must be one of {', '.join(OPTIMIZATIONS)} "
                                     f"(got {self.optimization!r})")
        for name in ("memory_arena", "spinning"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOptionError(f"{name} must be True or False (got {getattr(self, name)!r})")


# How long an idle pool thread spins before it sleeps (a key of recent ONNX Runtime releases;
# older ones ignore it).  Within a run operators follow each other in microseconds, a decode loop calls
# again soon after; ONNX Runtime's own limit, a spin count, kept the second core of a 2-core
# Xeon VM ~60% busy for the 50 ms after every call.  Measured there, against that default
# spinning: all-MiniLM-L6-v2 FP32 and INT8 latency at batch 1 and 8 and a tiny Llama's decode
# tokens/s within the noise (+-5%), idle CPU after a call 3-5 ms per 50 ms instead of 29-31.
# (Spinning off: INT8 1.3x and FP32 1.15x slower at batch 1, decoding 1.19x slower.)
SPIN_DURATION_US = 1000

# Checks, comparisons and graph inspection: CPU, and no spinning threads, because these
# sessions often live beside another one and on few cores idle spinning slows it down.
QUIET_CPU = SessionSettings(device="cpu", spinning=False)
INSPECTION = SessionSettings(device="cpu", spinning=False, optimization="none")


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises for a model or feeds it cannot handle."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NoModel",
             "RuntimeException", "NotImplemented", "EPFail", "EngineError")
    return tuple(getattr(state, n) for n in names if hasattr(state, n)) + (RuntimeError,)


def session_options(settings: SessionSettings):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.optimization]
    if settings.threads:
        options.intra_op_num_threads = settings.threads
    if settings.inter_op_threads:
        options.inter_op_num_threads = settings.inter_op_threads
    options.enable_cpu_mem_arena = settings.memory_arena
    if not settings.spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    else:
        for pool in ("intra_op", "inter_op"):
            options.add_session_config_entry(f"session.{pool}.spin_duration_us", str(SPIN_DURATION_US))
    return options


def choose_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "auto":
        return [p for p in (PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]) if p in available]
    wanted = PROVIDERS[device]
    if wanted not in available:
        raise DeviceError(f"device '{device}' needs ONNX Runtime's {wanted}, which this installation lacks "
                          f"(available: {', '.join(available)}); {gpu_install_advice()}, or use --device cpu")
    return [wanted] if device == "cpu" else [wanted, PROVIDERS["cpu"]]


def gpu_install_advice() -> str:
    """How to get ONNX Runtime's GPU providers, given what is installed: the CPU and GPU
    wheels install the same module, and whichever was installed last owns its files."""
    from importlib import metadata

    installed = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
            installed.add(name)
        except metadata.PackageNotFoundError:
            pass
    if installed == {"onnxruntime", "onnxruntime-gpu"}:
        return ("both onnxruntime and onnxruntime-gpu are installed and the CPU wheel's files won: run 'pip uninstall "
                "-y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu'")
    return "install the GPU providers with: pip install 'edgeport[gpu]' (then the two commands in the README)"


def create_session(model: Path | str | bytes, settings: SessionSettings = QUIET_CPU,
                   provider_options: dict[str, dict[str, str]] | None = None, save_optimized: Path | None = None):
    """An InferenceSession for a model file (or its bytes); a model ONNX Runtime cannot load
    is an ArtifactError with ONNX Runtime's reason.  ``provider_options``: provider name ->
    its options, for the providers that get used (an artifact's TensorRT EP settings).
    ``save_optimized``: where ONNX Runtime writes the graph after its optimizations."""
    import onnxruntime as ort

    providers = [(p, provider_options[p]) if provider_options and p in provider_options else p
                 for p in choose_providers(settings.device)]
    source = model if isinstance(model, bytes) else str(model)
    options = session_options(settings)
    if save_optimized is not None:
        options.optimized_model_filepath = str(save_optimized)
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except ort_errors() as exc:
        what = "the model" if isinstance(model, bytes) else f"'{model}'"
        raise ArtifactError(f"ONNX Runtime cannot load {what}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _specs_from_session(session) -> list[TensorSpec]:
    specs = []
    for meta in session.get_inputs():
        dtype = _ORT_TYPES.get(meta.type, "float32")
        # An unnamed dynamic axis gets a name of its own, so no two of them are taken as one.
        shape = tuple(d if isinstance(d, int) else (d or f"{meta.name}_dim{axis}") for axis, d in enumerate(meta.shape))
        specs.append(TensorSpec(meta.name, np.dtype(dtype), shape))
    return specs


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class OnnxRuntimeRunner(Runner):
    """One ONNX Runtime session; ``run`` is safe to call from several threads at once."""

    def __init__(self, model: Path | str | bytes, settings: SessionSettings = QUIET_CPU,
                 inputs: Sequence[TensorSpec] | None = None, output_names: Sequence[str] | None = None,
                 provider_options: dict[str, dict[str, str]] | None = None):
        self.session = create_session(model, settings, provider_options)
        provider = self.session.get_providers()[0]
        if settings.device not in ("auto", "cpu") and provider != PROVIDERS[settings.device]:
            raise DeviceError(f"ONNX Runtime could not start {PROVIDERS[settings.device]} "
                              f"(it fell back to {provider}); check the CUDA/TensorRT libraries")
        super().__init__(inputs if inputs is not None else _specs_from_session(self.session),
                         output_names if output_names is not None else [o.name for o in self.session.get_outputs()],
                         provider)
        self.provider = provider
        # A graph exported with static shapes takes exactly its shapes: a range of one, so
        # more rows run in chunks of its batch (a server's joined requests, golden checks).
        for spec in self.inputs.values():
            if spec.shape and all(isinstance(d, int) and not isinstance(d, bool) for d in spec.shape):
                self.shape_range[spec.name] = (tuple(spec.shape), tuple(spec.shape))

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            if self.provider != PROVIDERS["cpu"]:
                return self._infer_bound(feeds)
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        except ort_errors() as exc:
            raise ModelInputError(f"ONNX Runtime refused the inputs: {_first_line(exc)}") from exc

    def _infer_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """On CUDA/TensorRT, bind inputs and outputs so ONNX Runtime copies each once,
        directly, instead of through its generic feed path.  (On CPU I/O binding only
        adds work: measured slower here.)  A binding per call keeps this thread-safe."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in self.output_names:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))

    def close(self) -> None:
        super().close()
        self.session = None


def run_all(runner: Runner, batches: Sequence[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    """The runner's outputs for every batch, in order (batches larger than the engine takes
    run in chunks of rows)."""
    return [runner.run_in_rows(feeds) for feeds in batches]
