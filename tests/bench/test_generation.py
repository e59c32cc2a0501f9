"""bench for causal LMs: time to first token, token rates, inter-token latency, parity as
token agreement and perplexity, side by side with transformers."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgeport.bench.report import REPORT_SCHEMA
from edgeport.errors import ParityError
from helpers import assert_fails

pytest.importorskip("onnxruntime_genai", reason="the llm extra (onnxruntime-genai) is not installed")


def test_generation_bench_with_the_transformers_baseline(cli, lms, tmp_path):
    from edgeport.quantize import QuantizeOptions, quantize

    fp32 = lms("llama")["onnx"]
    int4 = quantize(fp32.path, tmp_path / "int4", QuantizeOptions(mode="int4"))
    result = cli("bench", fp32.path, int4.path, "--baseline", "torch", "--rounds", "2", "--max-new-tokens", "8",
                 "--spinning", "--json", tmp_path / "g.json", "--html", tmp_path / "g.html")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "g.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"onnx", "int4", "torch (eager FP32, cpu)"}
    for row in rows.values():
        assert row["scenario"] == "generation" and row["ttft_ms"]["p50_ms"] > 0
        assert row["prefill_tokens_per_s"] > 0 and row["throughput_per_s"] > 0
        assert 1 <= row["mean_new_tokens"] <= 8
    assert rows["onnx"]["itl_ms"]["count"] > 0
    assert report["settings"]["spinning"].startswith("on (--spinning)") and "GenAI" in report["settings"]["spinning"]
    assert report["parity"]["onnx"]["generation"]["exact"] == 1.0
    assert 0.5 <= report["parity"]["int4"]["generation"]["token_agreement"] <= 1.0
    assert report["variants"][1]["peak_rss_mb"] > 0 and "TTFT p50" in result.output
    assert "generation speed per variant" in (tmp_path / "g.html").read_text()


def test_other_scenarios_do_not_apply_to_causal_lms(cli, lms):
    for scenario in ("offline", "single-stream"):     # single-stream written out: it ran generation instead
        result = cli("bench", lms("llama")["onnx"].path, "--scenario", scenario)
        assert result.exit_code == 2 and f"scenario {scenario} does not apply to causal LMs" in result.output


def test_two_different_causal_lms_are_not_benched_as_variants_of_one(cli, lms, tmp_path):
    """Encoders were refused as 'not the same model'; two LMs of other shapes were timed as one
    (a speed-up, and 0.25 token agreement read as a faithfulness figure)."""
    from edgeport.export.onnx import export_onnx
    from llm_models import build_lm

    other = export_onnx(build_lm(tmp_path / "narrow", steps=5, hidden=32), tmp_path / "narrow-onnx")
    result = cli("bench", "run", lms("llama")["onnx"].path, other.path, "--rounds", "1", "--no-memory")
    assert_fails(result, ParityError.exit_code, "not the same model", "hidden_size 32 / 64")
