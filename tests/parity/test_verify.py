"""edgeport verify: the parity gate between two artifacts."""

from __future__ import annotations

import pytest

from edgeport.errors import ParityError


@pytest.mark.slow
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

