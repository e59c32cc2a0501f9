"""Execution backends, after Polygraphy's runners: a public ``run()`` that checks feeds
against the graph's declared inputs, and a private ``_infer()`` that only executes.
Backends never time themselves; the bench does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DeviceError, ModelInputError

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEVICES = ("auto",) + tuple(PROVIDERS)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[Any, ...]      # ints are fixed, strings are symbolic

    @classmethod
    def from_manifest(cls, spec: dict[str, Any]) -> "TensorSpec":
        return cls(spec["name"], np.dtype(spec["dtype"]), tuple(spec["shape"]))

    def describe(self) -> str:
        return f"{self.name}: {self.dtype.name} [{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class SessionSettings:
    device: str = "auto"
    threads: int | None = None            # intra-op threads; None lets ONNX Runtime decide
    inter_op_threads: int | None = None
    optimization: str = "all"             # none | basic | extended | all
    memory_arena: bool = True
    spinning: bool = True                 # off while benchmarking several sessions side by side


def choose_providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)} (got '{device}')")
    available = ort.get_available_providers()
    if device == "auto":
        return [p for p in (PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]) if p in available]
    wanted = PROVIDERS[device]
    if wanted not in available:
        raise DeviceError(
            f"device '{device}' needs ONNX Runtime's {wanted}, which this installation lacks "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu"
        )
    return [wanted] if device == "cpu" else [wanted, PROVIDERS["cpu"]]


def cpu_session(model, spinning: bool = False):
    """A quiet CPU session for checks and comparisons (a model file path or bytes).

    Spinning is off by default: these sessions often live beside another one in the same
    process, and on few cores idle spinning threads slow the other down."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend:
    """One ONNX Runtime session; ``run`` is safe to call from several threads at once."""

    def __init__(self, model_file: Path, inputs: Sequence[TensorSpec], outputs: Sequence[str],
                 settings: SessionSettings = SessionSettings()):
        import onnxruntime as ort

        self.inputs = {spec.name: spec for spec in inputs}
        self.output_names = list(outputs)
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
        providers = choose_providers(settings.device)
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=providers)
        except Exception as exc:
            from ..errors import ArtifactError
            raise ArtifactError(f"ONNX Runtime cannot load '{model_file}': {str(exc).splitlines()[0]}") from exc
        self.provider = self.session.get_providers()[0]
        if settings.device not in ("auto", "cpu") and self.provider != PROVIDERS[settings.device]:
            raise DeviceError(f"ONNX Runtime could not start {PROVIDERS[settings.device]} "
                              f"(it fell back to {self.provider}); check the CUDA/TensorRT libraries")

    def check(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Validate names, dtypes, ranks and fixed dims; return contiguous arrays."""
        if not isinstance(feeds, dict):
            raise ModelInputError(f"feeds must be a dict of input name to array, got {type(feeds).__name__}")
        missing = [name for name in self.inputs if name not in feeds]
        unknown = [name for name in feeds if name not in self.inputs]
        if missing or unknown:
            expected = "; ".join(spec.describe() for spec in self.inputs.values())
            problem = (f"missing {', '.join(missing)}" if missing else "") + \
                      ("; " if missing and unknown else "") + (f"unknown {', '.join(unknown)}" if unknown else "")
            raise ModelInputError(f"wrong inputs ({problem}); the model takes {expected}")
        checked = {}
        for name, spec in self.inputs.items():
            value = feeds[name]
            if not isinstance(value, np.ndarray):
                value = np.asarray(value)
            if value.dtype != spec.dtype:
                raise ModelInputError(f"input '{name}' is {value.dtype.name}, expected {spec.describe()}")
            if value.ndim != len(spec.shape):
                raise ModelInputError(f"input '{name}' has rank {value.ndim} {list(value.shape)}, "
                                      f"expected {spec.describe()}")
            for axis, (got, want) in enumerate(zip(value.shape, spec.shape)):
                if isinstance(want, int) and want > 0 and got != want:
                    raise ModelInputError(f"input '{name}' has size {got} on axis {axis}, expected {spec.describe()}")
            if value.size == 0:
                raise ModelInputError(f"input '{name}' is empty {list(value.shape)}")
            checked[name] = value if value.flags.c_contiguous else np.ascontiguousarray(value)
        return checked

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        return self._infer(self.check(feeds))

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.provider != PROVIDERS["cpu"]:
            return self._infer_bound(feeds)
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

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
        self.session = None
