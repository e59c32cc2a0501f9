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



@pytest.mark.slow
def test_verify_without_thresholds_checks_the_candidates_own_gate(cli, minilm_int8, minilm_onnx):
    # The INT8 artifact passed min_cosine at quantize: it passes that again.  The FP32 export
    # passed atol/rtol against PyTorch: the INT8 model as its reference is far outside them.
    result = cli("verify", minilm_int8.path, "--reference", minilm_onnx.path, "--limit", "16")
    gate = minilm_int8.manifest.parity["quantize"]["thresholds"]["min_cosine"]
    assert result.exit_code == 0 and f"min_cosine >= {gate:g}" in result.output, result.output
    result = cli("verify", minilm_onnx.path, "--reference", minilm_int8.path, "--limit", "16")
    assert result.exit_code == ParityError.exit_code and "FAILED" in result.output, result.output
    assert "atol <= " in result.output and "exceeds atol" in result.output
