"""The seventh hostile pass: run, serve's protocol, package (bundle, Triton, KServe) and
inspect as a deployment engineer misuses them.  (Server processes are tested beside the
server, tests/serve/test_server.py; bundles and signatures in tests/package.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeport.errors import InvalidOptionError, ModelInputError
from helpers import assert_fails


def test_a_bundle_name_its_reader_would_refuse_is_refused_when_packaging(cli, onnx_artifacts, tmp_path):
    out = tmp_path / "model:2026-12-02.tar.gz"
    assert_fails(cli("package", onnx_artifacts["classifier"].path, "--format", "bundle", "-o", out),
                 InvalidOptionError.exit_code, "holds ':'", absent=out)


def test_sixteen_bit_images_keep_their_range(tmp_path):
    """Pillow's RGB conversion clipped 16-bit greyscale at 255: almost every pixel white."""
    from PIL import Image

    from edgeport.data.readers import _read_image_folder as read_image_folder

    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)
    (tmp_path / "i16").mkdir()
    Image.fromarray(ramp).save(tmp_path / "i16" / "a.png")
    pixels = read_image_folder(tmp_path / "i16", error=ModelInputError)
    assert pixels.shape == (1, 3, 16, 16)
    np.testing.assert_allclose(pixels[0, 0], ramp / 65535.0, atol=1e-6)


def test_run_takes_batch_size_for_feed_files_and_names_an_image_folder_for_a_text_model(cli, onnx_artifacts, tmp_path,
                                                                                        monkeypatch):
    from PIL import Image

    from edgeport.runtime.model import Model

    artifact = onnx_artifacts["encoder"].path
    ids = np.random.default_rng(0).integers(5, 20, (7, 6))
    np.savez(tmp_path / "feeds.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    whole = cli("run", artifact, "--input", tmp_path / "feeds.npz", "--batch-size", "7")
    calls = []
    original = Model.run
    monkeypatch.setattr(Model, "run", lambda self, feeds: calls.append(len(feeds["input_ids"])) or original(self, feeds))
    chunked = cli("run", artifact, "--input", tmp_path / "feeds.npz", "--batch-size", "3")
    assert whole.exit_code == chunked.exit_code == 0, chunked.output
    assert calls == [3, 3, 1]                      # it was one call of 7 rows, whatever --batch-size said
    np.testing.assert_allclose(np.array(json.loads(chunked.output)["outputs"]["last_hidden_state"]),
                               np.array(json.loads(whole.output)["outputs"]["last_hidden_state"]), atol=1e-5)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    assert_fails(cli("run", artifact, "--input", tmp_path / "images"), ModelInputError.exit_code,
                 "is a folder of images", "give --text or a .txt / .jsonl file")


def test_inspect_says_a_bundle_was_checked_whatever_no_checksums_asked(cli, onnx_artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = tmp_path / "clf.tar.gz"
    assert cli("package", onnx_artifacts["classifier"].path, "--format", "bundle", "-o", bundle).exit_code == 0
    assert json.loads(cli("inspect", bundle, "--no-checksums", "--json").output)["checksums"] == "verified"
    folder = json.loads(cli("inspect", onnx_artifacts["classifier"].path, "--no-checksums", "--json").output)
    assert folder["checksums"] == "not checked"


def test_triton_does_not_join_requests_of_a_model_whose_rows_depend_on_their_batch(onnx_artifacts, tmp_path,
                                                                                   monkeypatch):
    """As edgeport serve by default: dynamic INT8 computes one activation scale per call, so
    joined requests would change each other's results."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (dev extra)")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from edgeport.package import PackageOptions, package
    from edgeport.quantize import QuantizeOptions, quantize

    int8 = quantize(onnx_artifacts["encoder"].path, tmp_path / "int8", QuantizeOptions(mode="int8-dynamic"))
    monkeypatch.chdir(int8.path)
    repo = package(".", tmp_path / "repo", PackageOptions("triton"))       # '.' names its folder: int8
    text = (repo / "int8" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.max_batch_size > 0 and not config.HasField("dynamic_batching")
    assert "# dynamic_batching {" in text and "quantizes its activations per call" in text


def test_an_infer_request_id_must_be_a_string(onnx_artifacts):
    import asyncio

    httpx = pytest.importorskip("httpx")
    from edgeport.runtime import load
    from edgeport.serve.app import build_app

    app = build_app(load(onnx_artifacts["classifier"].path), "clf")
    body = {"id": 5, "inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}]}

    async def ask():
        await app.server.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
                return [await client.post("/v2/models/clf/infer", json=b) for b in (body, {**body, "id": "5"})]
        finally:
            await app.server.shutdown()

    number, text = asyncio.run(ask())
    assert number.status_code == 400 and "'id' must be a string" in number.json()["error"]
    assert text.status_code == 200 and text.json()["id"] == "5"


@pytest.mark.slow
def test_causal_lms_a_short_context_takes_the_builder_and_a_foreign_tokenizer_is_refused(cli, tmp_path):
    """The builder's logits check asked for the text plus one token, past a short context, so
    such models fell back to the second route (no int4); a tokenizer with ids past the
    model's vocab was a torch IndexError."""
    import transformers

    from edgeport.artifact import Artifact
    from edgeport.errors import SourceError
    from llm_models import build_lm

    base = build_lm(tmp_path / "lm", steps=5)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 40}))
    result = cli("export", "onnx", base, "-o", tmp_path / "short")
    assert result.exit_code == 0, result.output
    assert Artifact.load(tmp_path / "short").manifest.export_parameters()["route"] == "genai-builder"
    small = transformers.AutoConfig.from_pretrained(base)
    small.vocab_size, small.max_position_embeddings = 400, 256
    transformers.AutoModelForCausalLM.from_config(small).save_pretrained(base)      # the 512-token tokenizer stays
    assert_fails(cli("export", "onnx", base, "-o", tmp_path / "foreign"), SourceError.exit_code,
                 "but the model's vocab_size is 400", absent=tmp_path / "foreign")
