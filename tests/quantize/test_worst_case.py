"""INT8 that stays faithful on text it has never seen: the default recipe's worst-case guard,
and budgets on the worst case (minimum, 1st percentile)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.data.domains import domain_sentences
from edgeport.errors import ParityError
from edgeport.export.onnx import export_onnx
from edgeport.quantize import QuantizeOptions, quantize
from edgeport.runtime import load
from helpers import cosines, folder_names


@pytest.mark.slow
@pytest.mark.parametrize("domain,count", [("legal", 300), ("science", 140)])
def test_default_recipe_holds_on_a_domain_it_was_not_calibrated_on(minilm_int8, minilm_onnx, domain, count):
    texts = domain_sentences(domain, count)
    cos = cosines(load(minilm_int8.path).predict(texts), load(minilm_onnx.path).predict(texts))
    print(f"{domain}: mean {cos.mean():.4f}, p1 {np.percentile(cos, 1):.4f}, min {cos.min():.4f}")
    assert cos.mean() >= 0.995 and cos.min() >= 0.99, (cos.mean(), cos.min())
    levers = minilm_int8.manifest.precision["levers"]
    assert any(lever.startswith("worst-case guard") for lever in levers) or not minilm_int8.manifest.precision[
        "kept_fp32_nodes"]


def test_a_first_percentile_budget_is_honoured(tmp_path, tiny_models):
    fp32 = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "fp32")
    plain = quantize(fp32.path, tmp_path / "plain", QuantizeOptions(mode="int8-dynamic", smooth=False))
    plain_p1 = plain.manifest.parity["quantize"]["sentence_embedding"]["p01_cosine"]
    budget = 1 - (1 - plain_p1) / 2      # attainable with some INT8 left: keeping every node is refused
    strict = quantize(fp32.path, tmp_path / "strict",
                      QuantizeOptions(mode="int8-dynamic", smooth=False, min_p01_cosine=budget))
    reached = strict.manifest.parity["quantize"]["sentence_embedding"]["p01_cosine"]
    assert reached >= budget > plain_p1
    records = strict.manifest.precision["sensitivity"]
    assert records and all({"node", "sensitivity", "score_when_kept", "latency_ms", "latency_cost_ms"} <= set(r)
                           for r in records)
    assert strict.manifest.parity["quantize"]["thresholds"] == {"min_p01_cosine": budget}


def test_a_budget_out_of_reach_fails_with_the_best_figures(tmp_path, tiny_models):
    """Keeping every node in FP32 always meets a cosine budget, so out of reach means within
    --max-kept-nodes: the speed a user is willing to give up."""
    fp32 = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "fp32")
    with pytest.raises(ParityError, match=r"cannot be met even with 1 of .* where it ended: .*1st-percentile.*"
                                              r"its best score, [0-9.]+, was '"):
        quantize(fp32.path, tmp_path / "never", QuantizeOptions(mode="int8-dynamic", smooth=False,
                                                                min_p01_cosine=0.99999999, max_kept_nodes=1))
    assert folder_names(tmp_path) == {"fp32"}


def test_the_guard_can_be_switched_off(tmp_path, minilm_onnx):
    plain = quantize(minilm_onnx.path, tmp_path / "plain", QuantizeOptions(mode="int8-dynamic", worst_case_guard=False))
    assert plain.manifest.precision["kept_fp32_nodes"] == []
    assert not any(lever.startswith("worst-case guard") for lever in plain.manifest.precision["levers"])
    assert plain.size_bytes() < 0.30 * minilm_onnx.size_bytes()
