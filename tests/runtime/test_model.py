"""The light runtime: processing from the manifest, checked feeds, no torch, thread safety."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgeport.errors import DeviceError, ModelInputError
from edgeport.export.onnx import ExportOptions, export_onnx
from edgeport.runtime import load
from helpers import TESTS_DIR


@pytest.fixture(scope="module")
def st_embeddings(minilm_dir, sentences):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences, batch_size=32)


def test_predict_matches_sentence_transformers_in_input_order(minilm_onnx, sentences, st_embeddings):
    model = load(minilm_onnx.path)
    assert model.provider == "CPUExecutionProvider"
    vectors = model.predict(sentences, batch_size=16)          # mixed lengths, sorted internally
    assert vectors.shape == st_embeddings.shape
    cosine = (vectors * st_embeddings).sum(1) / np.linalg.norm(st_embeddings, axis=1)
    assert cosine.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_length_sorting_gives_the_same_result_as_one_by_one(minilm_onnx, sentences):
    model = load(minilm_onnx.path)
    mixed = [sentences[0], "Short.", sentences[5] * 3, "", sentences[7]]
    together = model.predict(mixed)
    alone = np.stack([model.predict([t])[0] for t in mixed])
    np.testing.assert_allclose(together, alone, atol=2e-5)


def test_empty_and_overlong_input(minilm_onnx):
    model = load(minilm_onnx.path)
    assert model.predict([]).shape == (0, 384)
    long_text = " ".join(["documentation"] * 2000)
    cut = " ".join(["documentation"] * 254)    # 254 words + [CLS] + [SEP] = max_length 256
    np.testing.assert_allclose(model.predict([long_text]), model.predict([cut]), atol=1e-5)


def test_classifier_returns_labels_and_probabilities(tmp_path, tiny_models, sentences):
    artifact = export_onnx(tiny_models("bert", "text-classification"), tmp_path / "clf")
    model = load(artifact.path)
    predictions = model.predict(sentences[:9], batch_size=4)
    assert len(predictions) == 9
    for item in predictions:
        assert item["label"] in ("LABEL_A", "LABEL_B", "LABEL_C")
        assert abs(sum(item["probabilities"]) - 1.0) < 1e-6
        assert item["score"] == max(item["probabilities"])
    singles = [model.predict([s])[0]["probabilities"] for s in sentences[:9]]
    np.testing.assert_allclose([p["probabilities"] for p in predictions], singles, atol=1e-5)


def test_token_classifier_labels_real_tokens(tmp_path, tiny_models):
    artifact = export_onnx(tiny_models("distilbert", "token-classification"), tmp_path / "tok")
    result = load(artifact.path).predict(["Return the number of items.", "Hi"])
    assert [t["token"] for t in result[1]] == ["hi"]
    assert result[0][0]["token"] == "return" and result[0][0]["start"] == 0 and result[0][0]["end"] == 6
    assert all(abs(sum(t["probabilities"]) - 1) < 1e-6 for t in result[0])


def test_image_classifier_on_digits(tmp_path, tiny_models):
    from edgeport.data import digits_images

    artifact = export_onnx(tiny_models("vit", "image-classification"), tmp_path / "vit")
    images, _ = digits_images(10)
    predictions = load(artifact.path).predict(images, batch_size=4)
    assert len(predictions) == 10 and all(abs(sum(p["probabilities"]) - 1) < 1e-6 for p in predictions)


def test_static_artifact_is_padded_and_split(tmp_path, tiny_models, sentences):
    dynamic = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "dyn")
    static = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "static",
                         ExportOptions(static_shapes=True, sequence_length=48))
    texts = [s[:150] for s in sentences[:5]]
    np.testing.assert_allclose(load(static.path).predict(texts), load(dynamic.path).predict(texts), atol=1e-5)


def test_feeds_are_checked_before_onnx_runtime(minilm_onnx):
    model = load(minilm_onnx.path)
    ids = np.ones((1, 8), dtype=np.int64)
    good = {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids * 0}
    assert model.run(good)["last_hidden_state"].shape == (1, 8, 384)
    with pytest.raises(ModelInputError, match="missing token_type_ids.*input_ids: int64 \\[batch, sequence\\]"):
        model.run({"input_ids": ids, "attention_mask": ids})
    with pytest.raises(ModelInputError, match="unknown pixel_values"):
        model.run({**good, "pixel_values": ids})
    with pytest.raises(ModelInputError, match="'input_ids' is int32, expected input_ids: int64"):
        model.run({**good, "input_ids": ids.astype(np.int32)})
    with pytest.raises(ModelInputError, match="rank 1"):
        model.run({**good, "attention_mask": ids[0]})
    with pytest.raises(ModelInputError, match="empty"):
        model.run({k: v[:, :0] for k, v in good.items()})
    with pytest.raises(ModelInputError, match="not a string"):
        model.predict(["fine", 3])


def test_fixed_dims_are_checked(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    artifact = export_onnx("factories.cnn:cifar_cnn", tmp_path / "cnn", ExportOptions(inputs=["images:1x3x32x32:float32"]))
    model = load(artifact.path)
    with pytest.raises(ModelInputError, match="size 28 on axis 2, expected images: float32 \\[batch, 3, 32, 32\\]"):
        model.run({"images": np.zeros((2, 3, 28, 32), dtype=np.float32)})
    with pytest.raises(ModelInputError, match="takes no text or images, only its raw inputs"):
        model.predict(["text"])


def test_unavailable_device_is_an_error_not_a_fallback(minilm_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        load(minilm_onnx.path, device="cuda")
    with pytest.raises(DeviceError, match="device must be one of"):
        load(minilm_onnx.path, device="quantum")


def test_concurrent_calls_give_the_sequential_results(minilm_onnx, sentences):
    model = load(minilm_onnx.path, threads=1)
    batches = [sentences[i:i + 5] for i in range(0, 40, 5)]
    expected = [model.predict(b) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(model.predict, batches * 2))
    for got, want in zip(results, expected * 2):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_runtime_never_imports_torch(minilm_onnx):
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from edgeport.runtime import load\n"
        "elapsed = time.perf_counter() - start\n"
        f"model = load({str(minilm_onnx.path)!r})\n"
        "model.predict(['a sentence'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'peft', 'onnx', 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy, 'IMPORT', elapsed)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_idle_pool_threads_stop_spinning_soon_after_a_run(minilm_onnx):
    """Spinning threads are fast within a run; after it they must not keep a core busy (ONNX
    Runtime's own limit kept one ~60% busy for 50 ms after every call).  Measured in a fresh
    process, so no other test's threads count."""
    code = (
        "import time\n"
        "from edgeport.runtime import load\n"
        f"model = load({str(minilm_onnx.path)!r}, threads=2)\n"
        "busy = []\n"
        "for _ in range(5):\n"
        "    for _ in range(5):\n"
        "        model.predict(['a sentence long enough to give the pool some work'] * 4)\n"
        "    start = time.process_time()\n"
        "    time.sleep(0.1)\n"
        "    busy.append(time.process_time() - start)\n"
        "print('IDLE_CPU_S', sorted(busy)[2])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    idle_cpu = float(out.split("IDLE_CPU_S")[1])
    assert idle_cpu < 0.01, out          # under 10% of one core over the 100 ms after the calls


def test_cli_run_texts_and_npz(cli, tmp_path, minilm_onnx, monkeypatch):
    result = cli("run", minilm_onnx.path, "--text", "first sentence", "--text", "second")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["provider"] == "CPUExecutionProvider" and len(data["predictions"]) == 2
    assert len(data["predictions"][0]) == 384
    ids = np.array([[101, 2023, 102]], dtype=np.int64)
    np.savez(tmp_path / "feeds.npz", input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=ids * 0)
    result = cli("run", minilm_onnx.path, "--input", tmp_path / "feeds.npz")
    assert result.exit_code == 0, result.output
    assert np.asarray(json.loads(result.output)["outputs"]["last_hidden_state"]).shape == (1, 3, 384)
    np.savez(tmp_path / "bad.npz", input_ids=ids.astype(np.int32))
    result = cli("run", minilm_onnx.path, "--input", tmp_path / "bad.npz")
    assert result.exit_code == ModelInputError.exit_code and "error: wrong inputs" in result.output
    result = cli("run", minilm_onnx.path)
    assert result.exit_code == 2 and "--text" in result.output


@pytest.mark.gpu
def test_cuda_device_runs_with_io_binding(minilm_onnx, sentences):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install the gpu extra: see the README)")
    cpu = load(minilm_onnx.path, device="cpu").predict(sentences[:16])
    model = load(minilm_onnx.path, device="cuda")
    assert model.provider == "CUDAExecutionProvider"
    gpu = model.predict(sentences[:16])
    assert ((gpu * cpu).sum(1)).min() >= 0.9999
