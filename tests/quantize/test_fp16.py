"""fp16: the real MiniLM stays finite and close; overflowing nodes are kept in FP32."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.errors import ParityError
from edgeport.quantize import QuantizeOptions, quantize
from edgeport.runtime import load
from helpers import cosines as _cosines, folder_names


@pytest.mark.slow
def test_minilm_fp16_stays_finite_and_close(tmp_path, minilm_onnx, sentences):
    fp16 = quantize(minilm_onnx.path, tmp_path / "fp16", QuantizeOptions(mode="fp16"))
    vectors = load(fp16.path).predict(sentences)
    assert np.isfinite(vectors).all()
    assert _cosines(vectors, load(minilm_onnx.path).predict(sentences)).min() >= 0.999
    assert fp16.manifest.files["model.onnx"]["size"] < 0.6 * minilm_onnx.manifest.files["model.onnx"]["size"]
    # The attention mask's float-min constant overflows FP16: those nodes must stay FP32.
    assert fp16.manifest.precision["kept_fp32_nodes"]



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

