"""TensorRT engines as a runner, with the tensorrt and cuda-python packages (no torch).

An engine is specific to the GPU model and the TensorRT version that built it (NVIDIA:
"engines are not portable"), so the manifest records both and ``TensorRTRunner`` refuses an
engine built elsewhere before deserializing it, with the command that rebuilds it.  Inputs
are checked against the manifest (like every runner) and against the engine's optimisation
profile, whose range TensorRT would otherwise reject with a bare error.

Supported: TensorRT 10.x and 11.x (the named-tensor API: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), cuda-python 12 and 13.  Every TensorRT call
that reports failure through its return value (False, None, -1) is checked.  Engines whose
output shapes depend on the data (NonZero, NonMaxSuppression...) are refused when such an
output is met: outputs are sized before execution.  A runner is safe to share between
threads (``serve`` does): one execution context, so runs are serialized by a lock.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AcceleratorUnavailableError, ArtifactError, DeviceError, ModelInputError, UnsupportedModelError
from .runner import Runner

INSTALL_HINT = "on a machine with an NVIDIA GPU: pip install 'edgeport[tensorrt]' (tensorrt, cuda-python)"


def import_tensorrt():
    """The tensorrt module, or an AcceleratorUnavailableError that says how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise AcceleratorUnavailableError(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from exc
    except OSError as exc:          # the bindings are there but libnvinfer or CUDA is not
        raise AcceleratorUnavailableError(f"TensorRT cannot load its libraries ({exc}); {INSTALL_HINT}") from exc
    return tensorrt


def import_cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart
        return cudart
    except ImportError as exc:
        raise AcceleratorUnavailableError(f"cuda-python is not installed ({exc}); {INSTALL_HINT}") from exc


def cuda_call(result):
    """cuda-python returns (error, *values); raise on an error, return the values."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise DeviceError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class EngineEnvironment:
    """What an engine is tied to: the TensorRT version and the GPU."""

    tensorrt: str
    gpu: str
    compute_capability: str

    def to_dict(self) -> dict[str, str]:
        return {"tensorrt": self.tensorrt, "gpu": self.gpu, "compute_capability": self.compute_capability}


def engine_environment(device: int = 0) -> EngineEnvironment:
    """This machine's TensorRT and GPU, or AcceleratorUnavailableError saying what is missing."""
    trt = import_tensorrt()
    cudart = import_cudart()
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or count == 0:
        raise AcceleratorUnavailableError(f"no NVIDIA GPU is visible (CUDA: {error}, {count or 0} devices); TensorRT "
                                          "engines are built and run on the GPU they are for")
    properties = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = properties.name.decode(errors="replace") if isinstance(properties.name, bytes) else str(properties.name)
    return EngineEnvironment(trt.__version__, name.strip("\x00 "), f"{properties.major}.{properties.minor}")


def engine_mismatches(recorded: dict[str, Any], current: EngineEnvironment) -> list[str]:
    """How the machine an engine was built on differs from this one (empty: it can run here)."""
    problems = []
    if recorded.get("tensorrt") != current.tensorrt:
        problems.append(f"TensorRT {recorded.get('tensorrt')} built it, this machine has {current.tensorrt}")
    if recorded.get("compute_capability") != current.compute_capability or recorded.get("gpu") != current.gpu:
        problems.append(f"it was built for {recorded.get('gpu')} (compute capability "
                        f"{recorded.get('compute_capability')}), this machine has {current.gpu} "
                        f"({current.compute_capability})")
    return problems


def check_engine_fits(recorded: dict[str, Any], current: EngineEnvironment, where: str) -> None:
    problems = engine_mismatches(recorded, current)
    if problems:
        rebuild = recorded.get("rebuild") or f"edgeport export tensorrt {recorded.get('built_from', 'ONNX_ARTIFACT')}"
        raise DeviceError(f"the TensorRT engine in '{where}' cannot run here: {'; '.join(problems)}. Engines are not "
                          f"portable: rebuild it on this machine with: {rebuild} -o NEW")


def check_in_profile(name: str, shape: tuple[int, ...], profile: dict[str, Any]) -> None:
    low, high = profile["min"], profile["max"]
    for axis, (got, smallest, largest) in enumerate(zip(shape, low, high)):
        if not smallest <= got <= largest:
            raise ModelInputError(f"input '{name}' has size {got} on axis {axis}; this engine was built for "
                                  f"{smallest}..{largest} there (its optimisation profile): rebuild it with "
                                  f"--shapes {name}:MIN,OPT,MAX to cover it")


def ort_tensorrt_options(manifest, cache: Path) -> dict[str, str]:
    """ONNX Runtime TensorRT execution provider options for an artifact built with
    ``--via onnxruntime``: its profile, its workspace, and the engine and timing caches in
    ``cache``.  Precision is the graph's own: a Q/DQ graph is explicitly quantized, and
    ``trt_int8_enable`` (implicit INT8 with calibration) would make the provider build a
    weakly typed network from it, so it stays off, as does ``trt_fp16_enable``."""
    engine = manifest.graph["engine"]
    profile = engine["profile"]

    def shapes(key: str) -> str:
        return ",".join(f"{p['name']}:{'x'.join(map(str, p[key]))}" for p in profile)

    return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
            "trt_max_workspace_size": str(engine["workspace_mb"] << 20),
            "trt_fp16_enable": "False", "trt_int8_enable": "False",
            "trt_profile_min_shapes": shapes("min"), "trt_profile_opt_shapes": shapes("opt"),
            "trt_profile_max_shapes": shapes("max")}


def provider_cache(artifact) -> Path:
    """Where ONNX Runtime's TensorRT provider keeps this artifact's engines: a folder of the
    user's cache named by the manifest's digest, seeded with the engines built at export.
    The artifact itself is never written (it may be read-only, and its files are checksummed)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "edgeport" / "tensorrt-ep" / artifact.manifest_sha256[:32]
    if not folder.is_dir():
        staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        prefix = artifact.manifest.graph["engine"].get("cache", "") + "/"
        for name in artifact.manifest.files:
            if prefix != "/" and name.startswith(prefix):
                shutil.copyfile(artifact.member(name), staging / name[len(prefix):])
        try:
            os.replace(staging, folder)
        except OSError:            # another process seeded it first
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def checked(result, what: str):
    """TensorRT reports some failures only through its return value: False, None or -1."""
    if result is None or result is False or (isinstance(result, int) and not isinstance(result, bool) and result < 0):
        raise DeviceError(f"TensorRT could not {what}")
    return result


class TensorRTRunner(Runner):
    """A serialized engine (``model.plan``) run on the GPU it was built for."""

    def __init__(self, plan_file, manifest, where: str):
        engine_info = manifest.graph.get("engine") or {}
        trt = import_tensorrt()
        self._cudart = import_cudart()
        check_engine_fits(engine_info, engine_environment(), where)
        super().__init__(manifest.inputs, [s["name"] for s in manifest.graph["outputs"]], "tensorrt")
        self._profiles = {p["name"]: p for p in engine_info.get("profile", [])}
        self.shape_range = {name: (tuple(p["min"]), tuple(p["max"])) for name, p in self._profiles.items()}
        self._lock = threading.Lock()
        self._buffers: dict[str, tuple[int, int]] = {}       # tensor name -> (device pointer, bytes)
        self._stream = self._context = self._engine = None
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(plan_file).read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT could not deserialize '{plan_file}' (damaged, or built by "
                                "another TensorRT version)")
        self._context = checked(self._engine.create_execution_context(), "create an execution context (out of "
                                                                          "GPU memory?)")
        self._dtypes = {name: np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                        for name in (*self.inputs, *self.output_names)}
        self._stream = cuda_call(self._cudart.cudaStreamCreate())

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name``, grown (never shrunk) as needed."""
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                cuda_call(self._cudart.cudaFree(pointer))
            pointer = cuda_call(self._cudart.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _output_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self._context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise UnsupportedModelError(f"the engine's output '{name}' has a shape that depends on the data "
                                        f"({list(shape)} before running); edgeport's TensorRT runner sizes outputs "
                                        "before execution and does not run such engines: run the ONNX artifact")
        return shape

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:            # one execution context: runs from several threads take turns
            return self._infer_locked(feeds)

    def _infer_locked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        to_device, to_host = (cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        staged = []
        for name, value in feeds.items():
            if name in self._profiles:
                check_in_profile(name, value.shape, self._profiles[name])
            value = np.ascontiguousarray(value.astype(self._dtypes[name], copy=False))   # int64 ids -> int32 engines
            staged.append(value)             # kept alive until the stream is synchronized
            pointer = self._device_buffer(name, value.nbytes)
            cuda_call(cudart.cudaMemcpyAsync(pointer, value.ctypes.data, value.nbytes, to_device, self._stream))
            checked(self._context.set_input_shape(name, value.shape), f"set input '{name}' to {list(value.shape)}")
            checked(self._context.set_tensor_address(name, pointer), f"bind input '{name}'")
        outputs = {}
        for name in self.output_names:
            host = np.empty(self._output_shape(name), dtype=self._dtypes[name])
            checked(self._context.set_tensor_address(name, self._device_buffer(name, host.nbytes)),
                    f"bind output '{name}'")
            outputs[name] = host
        checked(self._context.execute_async_v3(self._stream), "run the engine on these inputs")
        for name, host in outputs.items():
            cuda_call(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes, to_host,
                                             self._stream))
        cuda_call(cudart.cudaStreamSynchronize(self._stream))
        return {name: value.astype(np.float32) if value.dtype == np.float16 else value
                for name, value in outputs.items()}

    def close(self) -> None:
        """Free in the reverse order of creation: device buffers and the stream, then the
        execution context, the engine and the runtime (an engine must outlive its contexts)."""
        if not self._closed:
            with self._lock:
                for pointer, _ in self._buffers.values():
                    self._cudart.cudaFree(pointer)
                self._buffers.clear()
                if self._stream is not None:
                    self._cudart.cudaStreamDestroy(self._stream)
                    self._stream = None
                self._context = None
                self._engine = None
                self._runtime = None
        super().close()
