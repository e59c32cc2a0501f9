"""Keras as a source: the classic CIFAR-style CNN, trained here on real digits, exported
through the CLI, run on raw uint8 images, quantized to INT8 static and benchmarked with
accuracy; and Keras files that cannot be exported."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import onnxruntime as ort
import pytest

import keras_models
from helpers import assert_fails
from edgeport.artifact import Artifact

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras_cnn(tmp_path_factory):
    """The trained CNN, its held-out digits, and its export through the CLI."""
    from click.testing import CliRunner

    from edgeport.cli import main

    work = keras_models.build("cnn", tmp_path_factory.mktemp("keras"))
    result = CliRunner().invoke(main, ["export", "onnx", str(work / "cnn.keras"), "-o", str(work / "onnx")])
    assert result.exit_code == 0, result.output
    return work


def _onnx_logits(artifact_dir, images_uint8):
    """The exported graph run directly on held-out images scaled as the manifest says."""
    artifact = Artifact.load(artifact_dir)
    image = artifact.manifest.processing["image"]
    assert image["layout"] == "NHWC" and image["input_range"] == [0, 1]
    session = ort.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images_uint8.astype(np.float32) / 255.0})[0]


def test_onnx_predictions_equal_keras_and_the_cnn_has_learned(keras_cnn):
    with np.load(keras_cnn / "eval.npz") as data:
        images = data["images"]
    keras_logits = np.load(keras_cnn / "keras_logits.npy")
    labels = np.load(keras_cnn / "labels.npy")
    logits = _onnx_logits(keras_cnn / "onnx", images)
    assert np.abs(logits - keras_logits).max() <= 1e-4
    assert (logits.argmax(1) == labels).mean() >= 0.8          # a few seconds of training on real digits

    manifest = Artifact.load(keras_cnn / "onnx").manifest
    assert manifest.task == "image-classification"
    assert manifest.graph["inputs"][0]["shape"] == ["batch", 32, 32, 3]
    assert manifest.parity["export"]["passed"]
    assert manifest.parity["export"]["outputs"]["logits"]["max_abs_err"] <= 1e-4
    assert manifest.lineage[-1]["parameters"]["route"] == "keras-export"


def test_run_takes_raw_uint8_images(keras_cnn, cli):
    result = cli("run", keras_cnn / "onnx", "--input", keras_cnn / "eval.npz")
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.output)["predictions"]
    expected = np.load(keras_cnn / "keras_logits.npy").argmax(1)
    assert [int(p["label"]) for p in predictions] == expected.tolist()


def test_int8_static_keeps_top1_and_bench_reports_accuracy(keras_cnn, cli, tmp_path):
    int8 = tmp_path / "int8"
    result = cli("quantize", keras_cnn / "onnx", "-o", int8, "--mode", "int8-static", "--calib",
                 keras_cnn / "calib.npz")
    assert result.exit_code == 0, result.output
    precision = Artifact.load(int8).manifest.precision
    assert precision["mode"] == "int8-static"
    assert precision["calibration"]["samples"] == 200
    report = tmp_path / "bench.json"
    result = cli("bench", keras_cnn / "onnx", int8, "--data", keras_cnn / "eval.npz", "--labels",
                 keras_cnn / "labels.npy", "--rounds", "1", "--min-duration", "0.05", "--min-count", "3",
                 "--no-memory", "--json", report)
    assert result.exit_code == 0, result.output
    parity = json.loads(report.read_text())["parity"]
    fp32, quantized = parity["onnx"], parity["int8"]
    assert quantized["outputs"]["logits"]["top1_agreement"] >= 0.98
    labels = np.load(keras_cnn / "labels.npy")
    keras_accuracy = (np.load(keras_cnn / "keras_logits.npy").argmax(1) == labels).mean()
    assert fp32["accuracy"] == {"samples": len(labels), "top1": pytest.approx(keras_accuracy, abs=1e-6)}
    assert abs(quantized["accuracy"]["top1"] - fp32["accuracy"]["top1"]) <= 0.02
    assert "accuracy" in result.output


def test_labels_that_do_not_match_the_data_are_refused(keras_cnn, cli, tmp_path):
    short = tmp_path / "labels.npy"
    np.save(short, np.load(keras_cnn / "labels.npy")[:10])
    result = cli("bench", keras_cnn / "onnx", "--data", keras_cnn / "eval.npz", "--labels", short, "--no-memory",
                 "--json", tmp_path / "r.json")
    assert_fails(result, 10, "10 labels", "397 examples", absent=tmp_path / "r.json")
    result = cli("bench", keras_cnn / "onnx", "--labels", keras_cnn / "labels.npy", "--no-memory")
    assert_fails(result, 2, "--labels", "--data")


def test_custom_layers_and_open_input_sizes_are_refused_and_odd_pixels_export(cli, tmp_path):
    keras_models.build("custom", tmp_path)
    result = cli("export", "onnx", tmp_path / "custom.keras", "-o", tmp_path / "out")
    assert_fails(result, 3, "only_here>Doubling", "register_keras_serializable", absent=tmp_path / "out")
    result = cli("export", "onnx", tmp_path / "open_size.keras", "-o", tmp_path / "out")
    assert_fails(result, 3, "(None, None, None, 3)", "fixed input size", absent=tmp_path / "out")

    # Off the RGB float32 path, and valid: float16 pixels (the check images were float32 and
    # refused), five bands (the manifest took at most four, after the folder was in place).
    from PIL import Image

    (tmp_path / "grey").mkdir()
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(tmp_path / "grey" / "a.png")
    for name, dtype in (("float16", "float16"), ("bands", "float32")):
        result = cli("export", "onnx", tmp_path / f"{name}.keras", "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        artifact = Artifact.load(tmp_path / name)
        assert artifact.manifest.inputs[0].dtype.name == dtype
        result = cli("run", tmp_path / name, "--input", tmp_path / "grey")     # greyscale fills every band
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.output)["predictions"][0]["probabilities"]) == 3
    assert Artifact.load(tmp_path / "bands").manifest.processing["image"]["channels"] == 5
    # float32 feeds for the float16 model: cast, as verify and quantize read them (run refused them)
    np.savez(tmp_path / "feeds.npz", images=np.zeros((2, 8, 8, 3), np.float32))
    result = cli("run", tmp_path / "float16", "--input", tmp_path / "feeds.npz")
    assert result.exit_code == 0, result.output
    assert np.asarray(json.loads(result.output)["outputs"]["logits"]).shape == (2, 3)
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(tmp_path / "grey" / "b.png")      # photos of two sizes
    result = cli("run", tmp_path / "float16", "--input", tmp_path / "grey")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["predictions"]) == 2
    shutil.copyfile(tmp_path / "float16.keras", tmp_path / "SHOUTED.KERAS")        # Keras reads lower case only
    assert cli("export", "onnx", tmp_path / "SHOUTED.KERAS", "-o", tmp_path / "shouted").exit_code == 0
    result = cli("export", "onnx", tmp_path / "unbuilt.keras", "-o", tmp_path / "out")
    assert_fails(result, 3, "saved before it was built", "keras.Input", absent=tmp_path / "out")
    result = cli("export", "onnx", tmp_path / "lambda.keras", "-o", tmp_path / "out")
    assert_fails(result, 3, "holds a Lambda layer", "register_keras_serializable", absent=tmp_path / "out")
    # 1100 bands: past what the manifest's image processing takes (refused as "an invalid
    # manifest" edgeport made), so a tensor fed as it is.
    assert cli("export", "onnx", tmp_path / "wide.keras", "-o", tmp_path / "wide").exit_code == 0
    wide = Artifact.load(tmp_path / "wide")
    assert "image" not in wide.manifest.processing and tuple(wide.manifest.inputs[0].shape[1:]) == (2, 2, 1100)


def test_savedmodel_folders_and_damaged_files_are_refused(cli, tmp_path, keras_cnn):
    saved = tmp_path / "saved_model"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"\x08\x01")
    result = cli("export", "onnx", saved, "-o", tmp_path / "out")
    assert_fails(result, 3, "SavedModel", "TensorFlow", "model.keras", absent=tmp_path / "out")

    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes((keras_cnn / "cnn.keras").read_bytes()[:4000])
    result = cli("export", "onnx", truncated, "-o", tmp_path / "out")
    assert_fails(result, 3, "truncated.keras", absent=tmp_path / "out")

    hollow = tmp_path / "hollow.keras"            # a zip archive without a model in it
    with zipfile.ZipFile(hollow, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    result = cli("export", "onnx", hollow, "-o", tmp_path / "out")
    assert_fails(result, 3, "hollow.keras", absent=tmp_path / "out")


def test_the_keras_cnn_as_an_executorch_program(keras_cnn, cli, tmp_path):
    """Keras on its torch backend is a torch module: captured and lowered in the Keras child
    process, checked in ExecuTorch's runtime against Keras' predictions; raw uint8 images in."""
    pytest.importorskip("executorch")
    from edgeport.runtime import load

    out = tmp_path / "pte"
    result = cli("export", "executorch", keras_cnn / "cnn.keras", "-o", out)
    assert result.exit_code == 0, result.output
    manifest = Artifact.load(out).manifest
    assert manifest.graph["format"] == "executorch" and manifest.processing["image"]["layout"] == "NHWC"
    assert manifest.parity["export"]["reference"].startswith("Keras")
    with np.load(keras_cnn / "eval.npz") as data:
        images = data["images"][:40]
    keras_top1 = np.load(keras_cnn / "keras_logits.npy")[:40].argmax(-1)
    with load(out) as program:
        labels = [int(p["label"]) for p in program.predict(images)]
    assert labels == keras_top1.tolist()


def test_options_a_keras_file_does_not_take_are_refused(keras_cnn, cli, tmp_path):
    source, out = keras_cnn / "cnn.keras", tmp_path / "out"
    for option in (("--opset", "13"), ("--static-shapes",), ("--exporter", "dynamo"), ("--no-validate",),
                   ("--input", "images:1x8x8x1:float32"), ("--output-name", "y"), ("--external-data",)):
        assert_fails(cli("export", "onnx", source, "-o", out, *option), 2, option[0], "does not apply to a Keras file",
                     absent=out)
    assert_fails(cli("export", "onnx", source, "-o", out, "--task", "text-classification"), 2,
                 "this Keras model is a 'image-classification' model", absent=out)
    assert_fails(cli("export", "onnx", source, "-o", out, "--adapter", tmp_path), 2, "a Keras file takes none",
                 absent=out)


def test_modules_in_the_working_folder_are_not_imported_by_the_keras_child(keras_cnn, cli, tmp_path, monkeypatch):
    """The export's child process (and the bench's memory probe) import keras, numpy and
    onnxruntime: a keras.py or numpy.py in the user's folder, or the triton/ folder
    `package --format triton -o triton` writes, must not stand in for them."""
    for name in ("keras.py", "numpy.py"):
        (tmp_path / name).write_text("raise SystemExit('imported from the working folder')\n")
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text("raise SystemExit('imported from the working folder')\n")
    monkeypatch.chdir(tmp_path)
    result = cli("export", "onnx", keras_cnn / "cnn.keras", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    result = cli("bench", tmp_path / "out", "--rounds", "1", "--min-duration", "0", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    variant = json.loads((tmp_path / "r.json").read_text())["variants"][0]
    assert variant["peak_rss_mb"] > 0 and "memory_probe_error" not in variant
