"""edgeport export onnx: real MiniLM parity, many architectures, dynamic axes, module:callable,
and every bad input a user can give."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from helpers import TESTS_DIR, folder_names
from edgeport.artifact import Artifact
from edgeport.errors import (ArtifactError, InvalidOptionError, OutputExistsError, ParityError, SourceError,
                             UnsafeFileError, UnsupportedModelError)
from edgeport.export.onnx import ExportOptions, export_onnx


def test_minilm_matches_sentence_transformers_on_real_sentences(minilm_onnx, minilm_dir, sentences):
    from sentence_transformers import SentenceTransformer

    from edgeport.runtime.processing import TextProcessor, l2_normalize, mean_pool

    assert len(sentences) >= 100
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences, batch_size=16)
    text = TextProcessor.from_artifact(minilm_onnx)
    session = ort.InferenceSession(str(minilm_onnx.model_path), providers=["CPUExecutionProvider"])
    got = []
    for start in range(0, len(sentences), 16):
        feeds = text.encode(sentences[start:start + 16])
        hidden = session.run(["last_hidden_state"], feeds)[0]
        got.append(l2_normalize(mean_pool(hidden, feeds["attention_mask"])))
    cosine = (np.concatenate(got) * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine.min()


def test_minilm_manifest_describes_the_model(minilm_onnx):
    manifest = minilm_onnx.manifest
    assert manifest.task == "feature-extraction"
    assert [i["name"] for i in manifest.graph["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.graph["inputs"][0]["shape"] == ["batch", "sequence"]
    assert [o["name"] for o in manifest.graph["outputs"]] == ["last_hidden_state"]   # pooler dropped
    assert manifest.graph["outputs"][0]["shape"] == ["batch", "sequence", 384]
    assert manifest.processing["pooling"] == "mean" and manifest.processing["normalize"] is True
    assert manifest.processing["max_length"] == 256
    parity = manifest.parity["export"]
    assert parity["passed"] and parity["outputs"]["last_hidden_state"]["max_abs_err"] < 1e-4
    assert parity["samples"] >= 20
    lineage = manifest.lineage[-1]
    assert lineage["stage"] == "export" and lineage["parameters"]["exporter"] == "torchscript"
    assert "model.safetensors" in lineage["sources"] and "torch" in lineage["tools"]
    assert {"model.onnx", "golden.npz", "tokenizer.json", "config.json"} <= set(manifest.files)
    inputs, outputs = minilm_onnx.golden()
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert outputs["last_hidden_state"].shape[:2] == inputs["input_ids"].shape


def test_classifier_labels_come_from_config(tmp_path, tiny_models):
    artifact = export_onnx(tiny_models("bert", "text-classification"), tmp_path / "out")
    assert artifact.manifest.processing["labels"] == ["LABEL_A", "LABEL_B", "LABEL_C"]
    assert artifact.manifest.graph["outputs"][0]["shape"] == ["batch", 3]


def test_task_override_drops_the_head(tmp_path, tiny_models):
    artifact = export_onnx(tiny_models("bert", "text-classification"), tmp_path / "out",
                           ExportOptions(task="feature-extraction"))
    assert artifact.task == "feature-extraction"
    assert artifact.manifest.graph["outputs"][0]["name"] == "last_hidden_state"


def test_module_callable_cnn(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    out = tmp_path / "cnn"
    result = cli("export", "onnx", "factories.cnn:cifar_cnn", "-o", out, "--input", "images:1x3x32x32:float32")
    assert result.exit_code == 0, result.output
    artifact = Artifact.load(out)
    assert artifact.task == "custom"
    assert artifact.manifest.graph["inputs"] == [{"name": "images", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    session = ort.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])
    from factories.cnn import cifar_cnn

    images = np.random.default_rng(2).standard_normal((7, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = cifar_cnn().eval()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(session.run(None, {"images": images})[0], expected, atol=1e-4)


def test_module_callable_with_several_inputs_and_named_outputs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    artifact = export_onnx("factories.cnn:two_heads", tmp_path / "out",
                           ExportOptions(inputs=["features:2x8:float32", "mask:2:float32"],
                                         output_names=["a", "b"]))
    assert [o["name"] for o in artifact.manifest.graph["outputs"]] == ["a", "b"]
    assert artifact.manifest.graph["outputs"][1]["shape"] == ["batch", 3]


def test_static_shapes_fix_batch_and_sequence(tmp_path, tiny_models):
    artifact = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "out",
                           ExportOptions(static_shapes=True, sequence_length=32))
    assert artifact.manifest.graph["inputs"][0]["shape"] == [1, 32]
    assert artifact.manifest.graph["static_shapes"] is True
    assert artifact.manifest.lineage[-1]["parameters"]["exporter"] == "static"


def test_dynamo_route(tmp_path, tiny_models):
    artifact = export_onnx(tiny_models("bert", "text-classification"), tmp_path / "out",
                           ExportOptions(exporter="dynamo"))
    assert artifact.manifest.lineage[-1]["parameters"]["exporter"] == "dynamo"
    assert artifact.manifest.graph["inputs"][0]["shape"] == ["batch", "sequence"]
    assert artifact.manifest.graph["opset"] >= 18
    assert artifact.manifest.parity["export"]["passed"]


def test_external_data_when_asked(tmp_path, tiny_models):
    artifact = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "out",
                           ExportOptions(external_data=True))
    assert "model.onnx.data" in artifact.manifest.files
    assert artifact.manifest.graph["external_data"] is True
    assert artifact.manifest.files["model.onnx"]["size"] < artifact.manifest.files["model.onnx.data"]["size"]
    graph, data = artifact.path / "model.onnx", artifact.path / "model.onnx.data"
    assert data.stat().st_mode & 0o777 == graph.stat().st_mode & 0o777      # onnx makes it 0600
    ort.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])


def test_no_validate_records_no_parity(tmp_path, tiny_models):
    artifact = export_onnx(tiny_models("distilbert", "feature-extraction"), tmp_path / "out",
                           ExportOptions(validate=False))
    assert artifact.manifest.parity == {}
    assert artifact.manifest.lineage[-1]["parameters"]["validated"] is False
    assert artifact.golden() is not None


def test_parity_beyond_tolerance_fails_and_writes_nothing(tmp_path, tiny_models):
    with pytest.raises(ParityError, match="does not match PyTorch") as info:
        export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "out",
                    ExportOptions(atol=0.0, rtol=0.0, exporter="torchscript"))
    assert "max abs error" in str(info.value)
    assert folder_names(tmp_path) == set()


# ------------------------------------------------------------------------ bad inputs, via the CLI


def _assert_fails(result, exit_code, *phrases):
    assert result.exit_code == exit_code, result.output
    assert result.output.startswith("error: ") or "\nerror: " in result.output, result.output
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output, result.output


def test_missing_folder(cli, tmp_path):
    _assert_fails(cli("export", "onnx", tmp_path / "nope", "-o", tmp_path / "out"), SourceError.exit_code,
                  "does not exist")
    assert not (tmp_path / "out").exists()


def test_folder_without_config(cli, tmp_path):
    (tmp_path / "src").mkdir()
    _assert_fails(cli("export", "onnx", tmp_path / "src", "-o", tmp_path / "out"), SourceError.exit_code,
                  "no config.json")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage-header"])
def test_corrupted_safetensors(cli, tmp_path, tiny_models, damage):
    src = tmp_path / "src"
    shutil.copytree(tiny_models("bert", "feature-extraction"), src)
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 8 + data[8:])
    _assert_fails(cli("export", "onnx", src, "-o", tmp_path / "out"), SourceError.exit_code, "model.safetensors")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_lists_supported(cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "quantum-transformer"}))
    _assert_fails(cli("export", "onnx", src, "-o", tmp_path / "out"), UnsupportedModelError.exit_code,
                  "quantum-transformer", "bert", "vit", "module:callable")
    assert not (tmp_path / "out").exists()


def test_unsupported_task_for_architecture(cli, tmp_path, tiny_models):
    _assert_fails(cli("export", "onnx", tiny_models("vit", "feature-extraction"), "-o", tmp_path / "out",
                      "--task", "token-classification"), UnsupportedModelError.exit_code, "image-classification")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec,phrase", [
    ("images", "name:1x3x32x32:float32"),
    ("images:1x3xAx32:float32", "positive integers"),
    ("images:1x0x32:float32", "positive integer"),
    ("images:1x3x32x32:complex", "not one of"),
])
def test_bad_input_spec(cli, tmp_path, spec, phrase):
    _assert_fails(cli("export", "onnx", "factories.cnn:cifar_cnn", "-o", tmp_path / "out", "--input", spec),
                  InvalidOptionError.exit_code, phrase)
    assert not (tmp_path / "out").exists()


def test_callable_without_input_specs(cli, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    _assert_fails(cli("export", "onnx", "factories.cnn:cifar_cnn", "-o", tmp_path / "out"),
                  InvalidOptionError.exit_code, "--input")


@pytest.mark.parametrize("factory,phrase", [("not_a_module", "not a torch.nn.Module"),
                                            ("broken_factory", "fell over"), ("missing", "no callable")])
def test_bad_factories(cli, tmp_path, monkeypatch, factory, phrase):
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    _assert_fails(cli("export", "onnx", f"factories.cnn:{factory}", "-o", tmp_path / "out",
                      "--input", "x:1x3:float32"), SourceError.exit_code, phrase)


def test_existing_output_needs_force_and_force_replaces_only_artifacts(cli, tmp_path, tiny_models):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    src = tiny_models("distilbert", "feature-extraction")
    _assert_fails(cli("export", "onnx", src, "-o", out), OutputExistsError.exit_code, "--force")
    assert folder_names(out) == {"keep.txt"}
    # --force never deletes a folder edgeport did not make.
    _assert_fails(cli("export", "onnx", src, "-o", out, "--force"), OutputExistsError.exit_code,
                  "not an edgeport artifact")
    assert folder_names(out) == {"keep.txt"}
    artifact = tmp_path / "artifact"
    assert cli("export", "onnx", src, "-o", artifact).exit_code == 0
    before = Artifact.load(artifact).manifest.lineage[-1]["time"]
    result = cli("export", "onnx", src, "-o", artifact, "--force")
    assert result.exit_code == 0, result.output
    assert "model.onnx" in folder_names(artifact) and Artifact.load(artifact).manifest.lineage[-1]["time"] >= before
    assert folder_names(tmp_path) == {"out", "artifact"}        # no temporary folders left behind


def test_pickle_weights_need_allow_pickle(cli, tmp_path, tiny_models):
    from safetensors.torch import load_file

    src = tmp_path / "src"
    shutil.copytree(tiny_models("distilbert", "feature-extraction"), src)
    torch.save(load_file(src / "model.safetensors"), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    assert (src / "pytorch_model.bin").exists() and not (src / "model.safetensors").exists()
    _assert_fails(cli("export", "onnx", src, "-o", tmp_path / "out"), UnsafeFileError.exit_code,
                  "pickle", "--allow-pickle")
    assert not (tmp_path / "out").exists()
    result = cli("export", "onnx", src, "-o", tmp_path / "out", "--allow-pickle")
    assert result.exit_code == 0, result.output
    assert Artifact.load(tmp_path / "out").manifest.parity["export"]["passed"]


def test_bad_opset(cli, tmp_path, tiny_models):
    _assert_fails(cli("export", "onnx", tiny_models("distilbert", "feature-extraction"), "-o", tmp_path / "out",
                      "--opset", "99"), InvalidOptionError.exit_code, "--opset")


def test_debug_shows_the_traceback(tmp_path):
    from click.testing import CliRunner

    from edgeport.cli import main

    result = CliRunner().invoke(main, ["--debug", "export", "onnx", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert isinstance(result.exception, SourceError)


def test_inspect_reads_the_artifact(cli, minilm_onnx):
    result = cli("inspect", minilm_onnx.path)
    assert result.exit_code == 0, result.output
    for phrase in ("feature-extraction", "input_ids", "[batch, sequence]", "opset 17", "MatMul 48",
                   "checksums verified", "parity", "lineage"):
        assert phrase in result.output, phrase
    data = json.loads(cli("inspect", minilm_onnx.path, "--json").output)
    assert data["operators"]["MatMul"] == 48
    assert data["size_bytes"] > 80e6 and data["checksums"] == "verified"


def test_inspect_detects_tampering(cli, tmp_path, tiny_models):
    artifact = export_onnx(tiny_models("distilbert", "feature-extraction"), tmp_path / "a")
    with open(artifact.path / "golden.npz", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    _assert_fails(cli("inspect", artifact.path), ArtifactError.exit_code, "golden.npz", "sha256")
