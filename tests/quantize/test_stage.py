"""The quantize stage's refusals: bad calibration data, modes, targets, damaged artifacts."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.errors import ArtifactError, CalibrationDataError, InvalidOptionError
from edgeport.quantize import QuantizeOptions, quantize


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


@pytest.mark.slow
def test_quantizing_twice_is_refused(cli, minilm_int8, tmp_path):
    out = tmp_path / "out"
    _fails(cli, ["quantize", minilm_int8.path, "-o", out, "--mode", "int8-dynamic"], InvalidOptionError.exit_code,
           "already int8-dynamic", out=out)

