"""TensorRT engines built and run on a GPU (marked gpu: skipped without an NVIDIA GPU, and
without the tensorrt and cuda-python packages).  FP16 and INT8 engines for the real MiniLM
and the digits CNN, run through edgeport.runtime and compared with ONNX Runtime on the
CPU; the timing cache makes the second build faster."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'edgeport[tensorrt]')")

from helpers import cosines  # noqa: E402
from edgeport.engines.build import TensorRTOptions, export_tensorrt  # noqa: E402
from edgeport.runtime import load  # noqa: E402

SHAPES = ["input_ids:1x8,8x128,32x256"]


def _minilm_calibration(tmp_path):
    from edgeport.data import stdlib_sentences

    path = tmp_path / "calib.txt"
    path.write_text("\n".join(stdlib_sentences(64, split="calib")))
    return str(path)


def test_minilm_fp16_engine_matches_onnx_runtime(minilm_onnx, sentences, tmp_path):
    engine = export_tensorrt(minilm_onnx.path, tmp_path / "fp16", TensorRTOptions(
        shapes=SHAPES, fp16=True, timing_cache=str(tmp_path / "timing.cache")))
    record = engine.manifest.graph["engine"]
    assert engine.manifest.graph["format"] == "tensorrt" and record["tensorrt"] and record["compute_capability"]
    assert engine.manifest.parity["tensorrt"]["passed"]
    with load(engine.path) as gpu, load(minilm_onnx.path, device="cpu") as cpu:
        assert gpu.provider == "tensorrt"
        assert cosines(gpu.predict(sentences), cpu.predict(sentences)).min() >= 0.999


def test_minilm_int8_engine_from_symmetric_qdq(minilm_onnx, sentences, tmp_path):
    engine = export_tensorrt(minilm_onnx.path, tmp_path / "int8", TensorRTOptions(
        shapes=SHAPES, int8=True, calib=_minilm_calibration(tmp_path), timing_cache=str(tmp_path / "timing.cache")))
    assert engine.manifest.precision["mode"] == "int8-static" and engine.manifest.precision["target"] == "gpu"
    with load(engine.path) as gpu, load(minilm_onnx.path, device="cpu") as cpu:
        assert cosines(gpu.predict(sentences), cpu.predict(sentences)).min() >= 0.99


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_digits_cnn_engines_agree_with_onnx_runtime(digits_setup, tmp_path, precision):
    root, fp32, held_out, _ = digits_setup
    options = TensorRTOptions(fp16=precision == "fp16", int8=precision == "int8",
                              calib=str(root / "calib.npz") if precision == "int8" else None,
                              data=str(root / "heldout.npz"), timing_cache=str(tmp_path / "timing.cache"))
    engine = export_tensorrt(fp32.path, tmp_path / precision, options)
    images = held_out.reshape(-1, 1, 8, 8).astype(np.float32)
    with load(engine.path) as gpu, load(fp32.path, device="cpu") as cpu:
        got = np.concatenate([gpu.run({"images": image[None]})["logits"] for image in images])
        want = np.concatenate([cpu.run({"images": image[None]})["logits"] for image in images])
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98


def test_the_timing_cache_is_written_and_taken_by_the_next_build(minilm_onnx, tmp_path):
    cache = tmp_path / "timing.cache"
    messages = []
    for name in ("first", "second"):
        export_tensorrt(minilm_onnx.path, tmp_path / name, TensorRTOptions(shapes=SHAPES, timing_cache=str(cache)),
                        progress=messages.append)
        assert cache.is_file() and cache.stat().st_size > 0
    # The second build started from the first one's cache (a refused cache is announced).
    assert not any("starting a fresh one" in m for m in messages), messages


def test_bench_measures_the_engine_beside_the_onnx_artifact(minilm_onnx, tmp_path):
    from edgeport.bench.runner import BenchOptions, run_bench
    from edgeport.bench.scenarios import Settings

    engine = export_tensorrt(minilm_onnx.path, tmp_path / "fp16", TensorRTOptions(shapes=SHAPES, fp16=True))
    report = run_bench([str(minilm_onnx.path), str(engine.path)], BenchOptions(
        settings=Settings(rounds=1, min_duration=0.05, min_count=3), measure_memory=False))
    kinds = {v["name"]: v["kind"] for v in report.variants}
    assert kinds == {minilm_onnx.path.name: "onnx", "fp16": "tensorrt"}
    assert report.parity["fp16"]["passed"]


def test_a_profile_whose_minimum_is_above_one_builds_and_predicts(minilm_onnx, sentences, tmp_path):
    """Minimum batch 2 and length 16, maximum batch 4: the build's parity batches and
    predict() on one short text both fit inside it."""
    engine = export_tensorrt(minilm_onnx.path, tmp_path / "bounded", TensorRTOptions(
        shapes=["input_ids:2x16,4x64,4x128"], timing_cache=str(tmp_path / "timing.cache")))
    assert engine.manifest.parity["tensorrt"]["passed"]
    with load(engine.path) as gpu, load(minilm_onnx.path, device="cpu") as cpu:
        assert cosines(gpu.predict(["A short one."]), cpu.predict(["A short one."])).min() >= 0.9999
        assert cosines(gpu.predict(sentences[:9]), cpu.predict(sentences[:9])).min() >= 0.9999
