"""Triton model repositories, parsed with Triton's own protobuf schema (tritonclient)."""

from __future__ import annotations

import pytest

from edgeport.errors import InvalidOptionError
from edgeport.package import PackageOptions, TritonOptions, package

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient (dev extra) ships Triton's config schema")


def _parse(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_embedding_model_repository(onnx_artifacts, tmp_path):
    repo = package(onnx_artifacts["encoder"].path, tmp_path / "repo",
                   PackageOptions("triton", triton=TritonOptions(name="embed", max_batch_size=16, max_queue_delay_us=500,
                                                                 instances=2)))
    config = _parse(repo / "embed" / "config.pbtxt")
    assert config.name == "embed" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input_ids", model_config_pb2.TYPE_INT64, [-1]), ("attention_mask", model_config_pb2.TYPE_INT64, [-1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("last_hidden_state", model_config_pb2.TYPE_FP32, [-1, 16])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["edgeport_manifest_sha256"].string_value == onnx_artifacts["encoder"].manifest_sha256
    assert (repo / "embed" / "1" / "model.onnx").read_bytes() == onnx_artifacts["encoder"].model_path.read_bytes()


def test_classifier_repository(onnx_artifacts, tmp_path):
    repo = package(onnx_artifacts["classifier"].path, tmp_path / "repo", PackageOptions("triton"))
    config = _parse(repo / "classifier" / "config.pbtxt")
    assert config.max_batch_size == 32 and list(config.input[0].dims) == [8]
    assert config.output[0].name == "logits" and list(config.output[0].dims) == [3]


def test_tokenizer_ensemble_parses_and_tokenizes_like_the_runtime(onnx_artifacts, tmp_path):
    import importlib.util

    import numpy as np

    from edgeport.runtime import load

    repo = package(onnx_artifacts["encoder"].path, tmp_path / "repo",
                   PackageOptions("triton", triton=TritonOptions(name="embed", with_tokenizer=True)))
    tokenizer_config, ensemble = _parse(repo / "embed_tokenizer" / "config.pbtxt"), _parse(repo / "embed_text" / "config.pbtxt")
    assert tokenizer_config.backend == "python" and tokenizer_config.input[0].data_type == model_config_pb2.TYPE_STRING
    assert ensemble.platform == "ensemble"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["embed_tokenizer", "embed"]
    spec = importlib.util.spec_from_file_location("triton_tokenizer", repo / "embed_tokenizer" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    texts = ["Return the number of items.", "hi"]
    feeds = module.encode(module.load_tokenizer(), texts)
    expected = load(onnx_artifacts["encoder"].path).text_processor.encode(texts)
    for name in expected:
        np.testing.assert_array_equal(feeds[name], expected[name])


def test_repository_refusals(onnx_artifacts, tmp_path):
    with pytest.raises(InvalidOptionError, match="needs a text model"):
        package(onnx_artifacts["classifier"].path, tmp_path / "r",
                PackageOptions("triton", triton=TritonOptions(with_tokenizer=True)))
    with pytest.raises(InvalidOptionError, match="--max-batch"):
        package(onnx_artifacts["classifier"].path, tmp_path / "r", PackageOptions("triton", triton=TritonOptions(max_batch_size=0)))
    assert not (tmp_path / "r").exists()
