"""edgeport quantize: INT8 and FP16 on real data, accuracy-aware fallback, FP16 overflow
repair, and the bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import TESTS_DIR, folder_names
from edgeport.artifact import Artifact
from edgeport.errors import ArtifactError, CalibrationDataError, InvalidOptionError, ParityError
from edgeport.export.onnx import ExportOptions, export_onnx
from edgeport.quantize import QuantizeOptions, quantize
from edgeport.runtime import load

TESTS = TESTS_DIR


@pytest.fixture(scope="module")
def minilm_int8(tmp_path_factory, minilm_onnx):
    return quantize(minilm_onnx.path, tmp_path_factory.mktemp("q") / "int8", QuantizeOptions(mode="int8-dynamic"))


def _cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_minilm_int8_default_recipe_is_faithful_and_small(minilm_int8, minilm_onnx, sentences):
    assert len(sentences) >= 100
    cos = _cosines(load(minilm_int8.path).predict(sentences), load(minilm_onnx.path).predict(sentences))
    # Stock tools reach mean 0.962 / min 0.927 (per-tensor) and 0.993 / 0.984 (per-channel) here.
    assert cos.mean() >= 0.994, cos.mean()
    assert cos.min() >= 0.985, cos.min()
    assert minilm_int8.size_bytes() <= 0.30 * minilm_onnx.size_bytes()
    manifest = minilm_int8.manifest
    assert manifest.precision["mode"] == "int8-dynamic" and manifest.precision["per_channel"] is True
    assert manifest.precision["calibration"]["sha256"] and manifest.precision["smoothing_alpha"] == 0.7
    # Attention fused (QKV in one QAttention per layer); output, FFN1 and FFN2 MatMuls in int8.
    assert manifest.precision["operators"]["QAttention"] == 6
    assert manifest.precision["operators"]["MatMulInteger"] >= 18
    parity = manifest.parity["quantize"]
    assert parity["passed"] and parity["samples"] >= 100
    assert parity["sentence_embedding"]["min_cosine"] >= 0.985
    assert manifest.parity["quantize-vs-pytorch"]["outputs"]["last_hidden_state"]["nonfinite"] == 0
    assert [e["stage"] for e in manifest.lineage] == ["export", "quantize"]
    assert "tokenizer.json" in manifest.files and "golden.npz" in manifest.files


def test_minilm_fp16_stays_finite_and_close(tmp_path, minilm_onnx, sentences):
    fp16 = quantize(minilm_onnx.path, tmp_path / "fp16", QuantizeOptions(mode="fp16"))
    vectors = load(fp16.path).predict(sentences)
    assert np.isfinite(vectors).all()
    assert _cosines(vectors, load(minilm_onnx.path).predict(sentences)).min() >= 0.999
    assert fp16.manifest.files["model.onnx"]["size"] < 0.6 * minilm_onnx.manifest.files["model.onnx"]["size"]
    # The attention mask's float-min constant overflows FP16: those nodes must stay FP32.
    assert fp16.manifest.precision["kept_fp32_nodes"]


# ------------------------------------------------------------------------ digits CNN, int8-static


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    import sys

    from edgeport.data import digits_images

    sys.path.insert(0, str(TESTS))
    from factories.digits import TRAIN

    root = tmp_path_factory.mktemp("digits")
    fp32 = export_onnx("factories.digits:trained_digits_cnn", root / "fp32",
                       ExportOptions(inputs=["images:1x1x8x8:float32"], output_names=["logits"]))
    images, labels = digits_images()
    np.savez(root / "calib.npz", images=images[:200])
    np.savez(root / "heldout.npz", images=images[TRAIN:])
    return root, fp32, images[TRAIN:], labels[TRAIN:]


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_digits_cnn_int8_static_agrees_with_fp32(digits_setup, method):
    root, fp32, heldout, labels = digits_setup
    int8 = quantize(fp32.path, root / f"int8-{method}",
                    QuantizeOptions(mode="int8-static", calib=str(root / "calib.npz"), calibration_method=method,
                                    data=str(root / "heldout.npz")))
    parity = int8.manifest.parity["quantize"]
    assert parity["samples"] == len(heldout) == 397
    assert parity["outputs"]["logits"]["top1_agreement"] >= 0.98
    assert int8.manifest.precision["format"] == "QDQ"
    assert int8.manifest.precision["calibration"]["method"] == method
    logits_fp32 = load(fp32.path).run({"images": heldout})["logits"]
    logits_int8 = load(int8.path).run({"images": heldout})["logits"]
    accuracy_fp32 = float((logits_fp32.argmax(1) == labels).mean())
    accuracy_int8 = float((logits_int8.argmax(1) == labels).mean())
    print(f"digits accuracy ({method}): fp32 {accuracy_fp32:.4f}, int8 {accuracy_int8:.4f}")
    assert accuracy_fp32 >= 0.85
    assert accuracy_int8 >= accuracy_fp32 - 0.02


def test_accuracy_aware_mode_keeps_nodes_until_the_budget_holds(tmp_path, tiny_models, sentences):
    fp32 = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "fp32")
    plain = quantize(fp32.path, tmp_path / "plain", QuantizeOptions(mode="int8-dynamic", smooth=False))
    plain_min = plain.manifest.parity["quantize"]["sentence_embedding"]["min_cosine"]
    budget = 1 - (1 - plain_min) / 10          # ten times closer than the plain recipe
    strict = quantize(fp32.path, tmp_path / "strict",
                      QuantizeOptions(mode="int8-dynamic", smooth=False, min_cosine=budget))
    kept = strict.manifest.precision["kept_fp32_nodes"]
    assert kept and strict.manifest.precision["sensitivity"]
    reached = strict.manifest.parity["quantize"]["sentence_embedding"]["min_cosine"]
    assert reached >= budget > plain_min
    # The budget is met on held-out data too, not only where it was measured.
    cos = _cosines(load(strict.path).predict(sentences), load(fp32.path).predict(sentences))
    assert cos.min() >= 1 - 3 * (1 - budget)


def test_impossible_budget_fails_with_the_best_figures(digits_setup, tmp_path):
    root, fp32, _, _ = digits_setup
    with pytest.raises(ParityError, match="cannot be met.*best reached with .* kept.*max abs error"):
        quantize(fp32.path, tmp_path / "never", QuantizeOptions(mode="int8-static", calib=str(root / "calib.npz"),
                                                                data=str(root / "heldout.npz"), max_abs_error=1e-7))
    assert folder_names(tmp_path) == set()


# ------------------------------------------------------------------------ fp16 overflow


@pytest.fixture(scope="module")
def overflow_fp32(tmp_path_factory):
    import sys

    sys.path.insert(0, str(TESTS))
    return export_onnx("factories.digits:overflowing", tmp_path_factory.mktemp("ovf") / "fp32",
                       ExportOptions(inputs=["features:8x16:float32"]))


def test_fp16_overflow_breaks_without_fallback(overflow_fp32, tmp_path):
    with pytest.raises(ParityError, match="NaN or infinite"):
        quantize(overflow_fp32.path, tmp_path / "broken", QuantizeOptions(mode="fp16", fp16_fallback=False))
    assert folder_names(tmp_path) == set()


def test_fp16_overflow_is_kept_in_fp32_automatically(overflow_fp32, tmp_path):
    fp16 = quantize(overflow_fp32.path, tmp_path / "fp16", QuantizeOptions(mode="fp16"))
    assert fp16.manifest.precision["kept_fp32_nodes"]
    inputs, _ = overflow_fp32.golden()
    got = load(fp16.path).run(inputs)["output"]
    want = load(overflow_fp32.path).run(inputs)["output"]
    assert np.isfinite(got).all()
    assert _cosines(got, want).min() >= 0.999


# ------------------------------------------------------------------------ bad inputs


def _fails(cli, args, code, *phrases, out=None):
    result = cli(*args)
    assert result.exit_code == code, result.output
    assert "error: " in result.output and "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output, result.output
    if out is not None:
        assert not out.exists()


def test_empty_calibration_data(cli, digits_setup, tmp_path):
    root, fp32, _, _ = digits_setup
    (tmp_path / "empty.txt").write_text("\n\n")
    out = tmp_path / "out"
    _fails(cli, ["quantize", fp32.path, "-o", out, "--mode", "int8-static", "--calib", tmp_path / "empty.txt"],
           CalibrationDataError.exit_code, "holds no examples", out=out)


def test_calibration_with_wrong_input_names(cli, digits_setup, tmp_path):
    root, fp32, _, _ = digits_setup
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((4, 1, 8, 8), dtype=np.float32))
    out = tmp_path / "out"
    _fails(cli, ["quantize", fp32.path, "-o", out, "--mode", "int8-static", "--calib", tmp_path / "wrong.npz"],
           CalibrationDataError.exit_code, "['pixels']", "['images']", out=out)


def test_calibration_with_wrong_shapes(cli, digits_setup, tmp_path):
    root, fp32, _, _ = digits_setup
    np.savez(tmp_path / "shape.npz", images=np.zeros((4, 1, 28, 28), dtype=np.float32))
    out = tmp_path / "out"
    _fails(cli, ["quantize", fp32.path, "-o", out, "--mode", "int8-static", "--calib", tmp_path / "shape.npz"],
           CalibrationDataError.exit_code, "[4, 1, 28, 28]", out=out)


def test_text_calibration_for_a_model_without_tokenizer(cli, digits_setup, tmp_path):
    root, fp32, _, _ = digits_setup
    (tmp_path / "lines.txt").write_text("some text\n")
    out = tmp_path / "out"
    _fails(cli, ["quantize", fp32.path, "-o", out, "--mode", "int8-static", "--calib", tmp_path / "lines.txt"],
           CalibrationDataError.exit_code, "without a tokenizer", out=out)


def test_unknown_mode_and_target(cli, digits_setup, tmp_path):
    root, fp32, _, _ = digits_setup
    out = tmp_path / "out"
    result = cli("quantize", fp32.path, "-o", out, "--mode", "int3")
    assert result.exit_code == 2 and "'int3' is not one of" in result.output and not out.exists()
    result = cli("quantize", fp32.path, "-o", out, "--mode", "int8-dynamic", "--target", "riscv")
    assert result.exit_code == 2 and "'riscv' is not one of" in result.output and not out.exists()
    with pytest.raises(InvalidOptionError, match="unknown target 'riscv'"):
        quantize(fp32.path, out, QuantizeOptions(mode="int8-dynamic", target="riscv"))
    _fails(cli, ["quantize", fp32.path, "-o", out, "--mode", "int8-dynamic", "--target", "gpu"],
           InvalidOptionError.exit_code, "int8-static", out=out)
    _fails(cli, ["quantize", fp32.path, "-o", out, "--mode", "int8-static"], InvalidOptionError.exit_code,
           "--calib", out=out)


def test_corrupted_model(cli, digits_setup, tmp_path):
    import shutil

    root, fp32, _, _ = digits_setup
    broken = tmp_path / "broken"
    shutil.copytree(fp32.path, broken)
    with open(broken / "model.onnx", "r+b") as handle:
        handle.seek(40)
        handle.write(b"\xde\xad\xbe\xef")
    out = tmp_path / "out"
    _fails(cli, ["quantize", broken, "-o", out, "--mode", "int8-dynamic"], ArtifactError.exit_code,
           "model.onnx", "sha256", out=out)


def test_quantizing_twice_is_refused(cli, minilm_int8, tmp_path):
    out = tmp_path / "out"
    _fails(cli, ["quantize", minilm_int8.path, "-o", out, "--mode", "int8-dynamic"], InvalidOptionError.exit_code,
           "already int8-dynamic", out=out)


# ------------------------------------------------------------------------ verify


def test_verify_passes_and_fails_on_the_right_side(cli, minilm_int8, minilm_onnx):
    reached = minilm_int8.manifest.parity["quantize"]["sentence_embedding"]["min_cosine"]
    below, above = reached - 0.002, min(reached + 0.002, 1.0)
    result = cli("verify", minilm_int8.path, "--reference", minilm_onnx.path, "--min-cosine", f"{below:.6f}")
    assert result.exit_code == 0 and "PASSED" in result.output, result.output
    result = cli("verify", minilm_int8.path, "--reference", minilm_onnx.path, "--min-cosine", f"{above:.6f}")
    assert result.exit_code == ParityError.exit_code and "FAILED" in result.output
    assert "min cosine" in result.output


def test_verify_refuses_different_models(cli, minilm_onnx, digits_setup):
    _, fp32, _, _ = digits_setup
    result = cli("verify", fp32.path, "--reference", minilm_onnx.path)
    assert result.exit_code == ParityError.exit_code and "not the same model" in result.output


# ------------------------------------------------------------------------ calibration file formats


def test_text_calibration_from_jsonl_and_txt(tmp_path, tiny_models):
    import json as _json

    from edgeport.data import stdlib_sentences

    fp32 = export_onnx(tiny_models("bert", "text-classification"), tmp_path / "fp32")
    texts = stdlib_sentences(24, split="calib")
    (tmp_path / "calib.jsonl").write_text("\n".join(_json.dumps({"text": t}) for t in texts) + "\n")
    (tmp_path / "calib.txt").write_text("\n".join(texts) + "\n")
    for name in ("calib.jsonl", "calib.txt"):
        int8 = quantize(fp32.path, tmp_path / f"int8-{name}", QuantizeOptions(mode="int8-static",
                                                                               calib=str(tmp_path / name)))
        calibration = int8.manifest.precision["calibration"]
        assert calibration["samples"] == 24 and calibration["data"].startswith(name)
        assert int8.manifest.parity["quantize"]["outputs"]["logits"]["top1_agreement"] >= 0.9
    hashes = {Artifact.load(tmp_path / f"int8-{n}").manifest.precision["calibration"]["sha256"]
              for n in ("calib.jsonl", "calib.txt")}
    assert len(hashes) == 2


def test_image_folder_calibration(tmp_path, tiny_models):
    from PIL import Image

    from edgeport.data import digits_images

    fp32 = export_onnx(tiny_models("resnet", "image-classification"), tmp_path / "fp32")
    folder = tmp_path / "images"
    folder.mkdir()
    images, _ = digits_images(12)
    for index, image in enumerate(images):
        Image.fromarray((image[0] * 255).astype(np.uint8)).convert("RGB").save(folder / f"{index:02d}.png")
    int8 = quantize(fp32.path, tmp_path / "int8", QuantizeOptions(mode="int8-static", calib=str(folder)))
    assert int8.manifest.precision["calibration"]["samples"] == 12
    assert int8.manifest.parity["quantize"]["passed"]
