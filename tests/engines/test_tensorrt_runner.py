"""The TensorRT runner's own logic, on a machine without a GPU: every failure TensorRT reports
through a return value becomes a clear error, engines with data-dependent output shapes are
refused, runs from several threads take turns on the one execution context, and close()
frees in the right order.  tensorrt and cuda-python cannot run here (no GPU, no CUDA), so
small stand-ins report what the real packages report; the engines themselves are built and
run for real in test_build_gpu.py (marked gpu).  Also the pure parts: ONNX Runtime's
TensorRT provider options, its engine cache outside the artifact, the timing cache."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeport.artifact import Artifact, finalize_manifest
from edgeport.errors import DeviceError, ExportError, UnsupportedModelError
from edgeport.manifest import Manifest

TENSORRT = '''
import threading, time
import numpy as np
__version__ = "10.16.1.11"
EVENTS, KNOBS = [], {}
busy = threading.Lock()

class Logger:
    ERROR = WARNING = 0
    def __init__(self, level):
        pass

def nptype(dtype):
    return np.dtype(dtype)

class Context:
    def __init__(self):
        self.shapes = {}
    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return KNOBS.get("set_input_shape", True)
    def set_tensor_address(self, name, pointer):
        return KNOBS.get("set_tensor_address", True)
    def get_tensor_shape(self, name):
        return KNOBS.get("output_shape", (self.shapes["x"][0], 4))
    def execute_async_v3(self, stream):
        if not busy.acquire(blocking=False):
            EVENTS.append("overlap")
            return False
        time.sleep(0.002)
        busy.release()
        return KNOBS.get("execute", True)
    def __del__(self):
        EVENTS.append("context freed")

class Engine:
    def create_execution_context(self):
        return Context()
    def get_tensor_dtype(self, name):
        return "float32"
    def __del__(self):
        EVENTS.append("engine freed")

class Runtime:
    def __init__(self, logger):
        pass
    def deserialize_cuda_engine(self, data):
        return Engine() if data == b"plan" else None
    def __del__(self):
        EVENTS.append("runtime freed")
'''

CUDA_RUNTIME = '''
from types import SimpleNamespace
import tensorrt
pointers = iter(range(1, 10_000))
class cudaMemcpyKind:
    cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2
def cudaGetDeviceCount():
    return (0, 1)
def cudaGetDeviceProperties(device):
    return (0, SimpleNamespace(name=b"NVIDIA H200", major=9, minor=0))
def cudaStreamCreate():
    return (0, 7)
def cudaMalloc(size):
    return (0, next(pointers))
def cudaFree(pointer):
    tensorrt.EVENTS.append("buffer freed")
    return (0,)
def cudaMemcpyAsync(*args):
    return (0,)
def cudaStreamSynchronize(stream):
    return (0,)
def cudaStreamDestroy(stream):
    tensorrt.EVENTS.append("stream destroyed")
    return (0,)
'''


@pytest.fixture()
def standins(tmp_path, monkeypatch):
    root = tmp_path / "site"
    (root / "tensorrt").mkdir(parents=True)
    (root / "tensorrt" / "__init__.py").write_text(TENSORRT)
    (root / "cuda" / "bindings").mkdir(parents=True)
    (root / "cuda" / "__init__.py").write_text("")
    (root / "cuda" / "bindings" / "__init__.py").write_text("")
    (root / "cuda" / "bindings" / "runtime.py").write_text(CUDA_RUNTIME)
    monkeypatch.syspath_prepend(str(root))
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import tensorrt

    return tensorrt


def _engine_artifact(folder: Path) -> Artifact:
    folder.mkdir()
    (folder / "model.plan").write_bytes(b"plan")
    profile = [{"name": "x", "min": [1, 3], "opt": [4, 3], "max": [8, 3], "source": "--shapes"}]
    manifest = Manifest(task="custom", graph={
        "format": "tensorrt", "file": "model.plan",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}],
        "engine": {"tensorrt": "10.16.1.11", "gpu": "NVIDIA H200", "compute_capability": "9.0", "profile": profile}})
    finalize_manifest(folder, manifest)
    return Artifact.load(folder)


def _runner(tmp_path):
    from edgeport.runtime.tensorrt import TensorRTRunner

    artifact = _engine_artifact(tmp_path / "engine")
    return TensorRTRunner(artifact.model_path, artifact.manifest, str(artifact.path))


def test_a_run_within_the_profile_gives_outputs_of_the_engine_shape(standins, tmp_path):
    with _runner(tmp_path) as runner:
        assert runner.shape_range == {"x": ((1, 3), (8, 3))}
        assert runner.run({"x": np.ones((2, 3), np.float32)})["y"].shape == (2, 4)


@pytest.mark.parametrize("knob, value, phrase", [
    ("set_input_shape", False, "could not set input 'x' to \\[2, 3\\]"),
    ("set_tensor_address", False, "could not bind input 'x'"),
    ("execute", False, "could not run the engine"),
])
def test_failures_reported_by_return_values_are_errors(standins, tmp_path, knob, value, phrase):
    standins.KNOBS[knob] = value
    with _runner(tmp_path) as runner, pytest.raises(DeviceError, match=phrase):
        runner.run({"x": np.ones((2, 3), np.float32)})


def test_data_dependent_output_shapes_are_refused(standins, tmp_path):
    standins.KNOBS["output_shape"] = (-1, 4)
    with _runner(tmp_path) as runner, pytest.raises(UnsupportedModelError, match="depends on the data"):
        runner.run({"x": np.ones((2, 3), np.float32)})


def test_runs_from_several_threads_take_turns_on_the_one_context(standins, tmp_path):
    with _runner(tmp_path) as runner:
        threads = [threading.Thread(target=lambda: [runner.run({"x": np.ones((1, 3), np.float32)})
                                                    for _ in range(20)]) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert "overlap" not in standins.EVENTS


def test_close_frees_buffers_stream_context_engine_runtime_in_that_order(standins, tmp_path):
    runner = _runner(tmp_path)
    runner.run({"x": np.ones((2, 3), np.float32)})
    standins.EVENTS.clear()
    runner.close()
    order = [e for e in standins.EVENTS if e != "buffer freed"]
    assert standins.EVENTS[0] == "buffer freed"
    assert order == ["stream destroyed", "context freed", "engine freed", "runtime freed"]


def test_provider_options_are_a_pure_function_of_the_manifest(tmp_path):
    from edgeport.runtime.tensorrt import ort_tensorrt_options

    profile = [{"name": "input_ids", "min": [1, 1], "opt": [8, 128], "max": [32, 256]},
               {"name": "attention_mask", "min": [1, 1], "opt": [8, 128], "max": [32, 256]}]
    manifest = Manifest(task="feature-extraction", precision={"mode": "int8-static"}, graph={
        "format": "onnx", "file": "model.onnx", "inputs": [], "outputs": [],
        "engine": {"profile": profile, "workspace_mb": 1024, "cache": "trt_cache"}})
    options = ort_tensorrt_options(manifest, tmp_path / "cache")
    assert options == ort_tensorrt_options(manifest, tmp_path / "cache")
    assert options["trt_int8_enable"] == "False" and options["trt_fp16_enable"] == "False"   # Q/DQ: strongly typed
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert options["trt_max_workspace_size"] == str(1024 << 20)
    assert options["trt_profile_max_shapes"] == "input_ids:32x256,attention_mask:32x256"


def test_the_provider_cache_is_outside_the_artifact_and_seeded_from_it(onnx_artifacts, tmp_path, monkeypatch):
    import shutil

    from edgeport.runtime.tensorrt import provider_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "artifact"
    shutil.copytree(onnx_artifacts["classifier"].path, folder)
    (folder / "trt_cache").mkdir()
    (folder / "trt_cache" / "engine.bin").write_bytes(b"cached engine")
    manifest = Manifest.from_dict(json.loads((folder / "edgeport.json").read_text()))
    manifest.graph = dict(manifest.graph, engine={"cache": "trt_cache", "profile": [], "workspace_mb": 16})
    finalize_manifest(folder, manifest)
    folder.chmod(0o555)
    try:
        cache = provider_cache(Artifact.load(folder))
    finally:
        folder.chmod(0o755)
    assert (tmp_path / "xdg") in cache.parents and (cache / "engine.bin").read_bytes() == b"cached engine"
    Artifact.load(folder)                    # every checksum still holds: the artifact was not written


class _Config:
    """What build_engine asks of a TensorRT builder config, for the timing cache."""

    def __init__(self, accepts):
        self.accepts, self.offered = accepts, []

    def create_timing_cache(self, data):
        return data

    def set_timing_cache(self, cache, ignore_mismatch):
        self.offered.append(cache)
        return self.accepts(cache)


def test_a_timing_cache_from_another_tensorrt_is_replaced_not_ignored(tmp_path):
    from edgeport.engines.build import _use_timing_cache

    stale = tmp_path / "timing.cache"
    stale.write_bytes(b"from another GPU")
    said = []
    config = _Config(accepts=lambda cache: cache == b"")
    _use_timing_cache(config, stale, said.append)
    assert config.offered == [b"from another GPU", b""] and "starting a fresh one" in said[0]
    with pytest.raises(ExportError, match="empty timing cache"):
        _use_timing_cache(_Config(accepts=lambda cache: False), stale, said.append)
