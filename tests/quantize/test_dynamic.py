"""int8-dynamic (the default INT8 recipe) on the real MiniLM, and the accuracy-aware fallback."""

from __future__ import annotations

import pytest

from edgeport.export.onnx import export_onnx
from edgeport.quantize import QuantizeOptions, quantize
from edgeport.runtime import load
from helpers import cosines as _cosines


@pytest.mark.slow
def test_minilm_int8_default_recipe_is_faithful_and_small(minilm_int8, minilm_onnx, sentences):
    assert len(sentences) >= 100
    cos = _cosines(load(minilm_int8.path).predict(sentences), load(minilm_onnx.path).predict(sentences))
    # Stock tools reach mean 0.962 / min 0.927 (per-tensor) and 0.993 / 0.984 (per-channel) here.
    assert cos.mean() >= 0.994, cos.mean()
    assert cos.min() >= 0.985, cos.min()
    # 22 MB of 90: the feed-forward outlier channels the search moved to FP32 are a few KB.
    assert minilm_int8.size_bytes() <= 0.30 * minilm_onnx.size_bytes()
    manifest = minilm_int8.manifest
    precision = manifest.precision
    assert precision["mode"] == "int8-dynamic" and precision["per_channel"] is True
    assert precision["calibration"]["sha256"] and precision["smoothing_alpha"] == 0.7
    # The plain export and the fused-attention graph were both quantized and timed here, and
    # the faster taken (over the whole interval, else by the median of per-round ratios).  Plain: every weight MatMul in int8 (36: six per layer).  Fused:
    # one QAttention per layer (QKV) and three MatMuls.  Either way the residual sums are Sums
    # (no SkipLayerNormalization) and the outlier split's FP32 branches are plain MatMuls.
    structure = precision["structure"]
    assert structure["measured"] and len(structure["candidates"]) == 2
    assert (structure["chosen"] == "fused attention (QAttention)") == (structure["fused_speedup"] > 1)
    operators = precision["operators"]
    if structure["chosen"] == "fused attention (QAttention)":      # guarded blocks stay Attention, in FP32
        assert operators.get("QAttention", 0) + operators.get("Attention", 0) == 6
        assert operators["MatMulInteger"] >= 18 - len(precision["kept_fp32_nodes"])
    else:
        assert "QAttention" not in operators
        assert operators["MatMulInteger"] >= 36 - len(precision["kept_fp32_nodes"])
    assert operators["Sum"] >= 12 and "SkipLayerNormalization" not in operators
    # The search records what it measured, and chose the fastest candidate that held the guard.
    search = precision["search"]
    chosen = [step for step in search["steps"] if step["chosen"]][-1]
    assert chosen["passed"] and chosen["score"] >= search["thresholds"]["min_cosine"]
    assert all(step["latency_ms"] > 0 for step in search["steps"])
    assert sorted(r["node"] for r in precision.get("sensitivity", [])) == precision["kept_fp32_nodes"]
    assert precision["host"]["instruction_sets"] and precision["host"]["preset"]
    speed = precision["speed"]                   # measured on this host, whatever it says
    assert speed["measured"] and speed["ci95"][0] <= speed["speedup"] <= speed["ci95"][1]
    assert speed["faster"] == (speed["ci95"][0] > 1)
    assert speed["thread_wake_us"] is None or speed["thread_wake_us"] > 0
    parity = manifest.parity["quantize"]
    assert parity["passed"] and parity["samples"] >= 100
    assert parity["sentence_embedding"]["min_cosine"] >= 0.985
    assert manifest.parity["quantize-vs-source"]["outputs"]["last_hidden_state"]["nonfinite"] == 0
    assert [e["stage"] for e in manifest.lineage] == ["export", "quantize"]
    assert "tokenizer.json" in manifest.files and "golden.npz" in manifest.files



def test_accuracy_aware_mode_keeps_nodes_until_the_budget_holds(tmp_path, tiny_models, sentences):
    fp32 = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "fp32")
    plain = quantize(fp32.path, tmp_path / "plain", QuantizeOptions(mode="int8-dynamic", smooth=False))
    plain_min = plain.manifest.parity["quantize"]["sentence_embedding"]["min_cosine"]
    budget = 1 - (1 - plain_min) / 2           # twice as close as the plain recipe (all kept is refused: not INT8)
    strict = quantize(fp32.path, tmp_path / "strict",
                      QuantizeOptions(mode="int8-dynamic", smooth=False, min_cosine=budget))
    kept = strict.manifest.precision["kept_fp32_nodes"]
    assert kept and strict.manifest.precision["sensitivity"]
    reached = strict.manifest.parity["quantize"]["sentence_embedding"]["min_cosine"]
    assert reached >= budget > plain_min
    # The budget is met on held-out data too, not only where it was measured.
    cos = _cosines(load(strict.path).predict(sentences), load(fp32.path).predict(sentences))
    assert cos.min() >= 1 - 3 * (1 - budget)

