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


def _write_text(text):
    def write(folder):
        (folder / "calib.txt").write_text(text)
        return folder / "calib.txt"
    return write


def _write_npz(**arrays):
    def write(folder):
        np.savez(folder / "calib.npz", **arrays)
        return folder / "calib.npz"
    return write


@pytest.mark.parametrize("write,phrases", [
    (_write_text("\n\n"), ["holds no examples"]),
    (_write_npz(pixels=np.zeros((4, 1, 8, 8), dtype=np.float32)), ["['pixels']", "['images']"]),
    (_write_npz(images=np.zeros((4, 1, 28, 28), dtype=np.float32)), ["[4, 1, 28, 28]"]),
    (_write_text("some text\n"), ["without a tokenizer"]),
], ids=["empty", "wrong-input-names", "wrong-shapes", "text-for-a-model-without-tokenizer"])
def test_bad_calibration_data_is_refused(cli, digits_setup, tmp_path, write, phrases):
    root, fp32, _, _ = digits_setup
    out = tmp_path / "out"
    _fails(cli, ["quantize", fp32.path, "-o", out, "--mode", "int8-static", "--calib", write(tmp_path)],
           CalibrationDataError.exit_code, *phrases, out=out)


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

