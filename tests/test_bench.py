"""edgeport bench: statistics, the Poisson schedule, reports (JSON schema, HTML plots),
compare's exit codes, interruption."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import jsonschema
import numpy as np
import pytest

from edgeport.bench.compare import compare
from edgeport.bench.report import REPORT_SCHEMA
from edgeport.bench.runner import BenchOptions, run_bench
from edgeport.bench.scenarios import Settings, interleaved_latency
from edgeport.bench.stats import latency_stats, median_confidence_interval, poisson_arrivals
from edgeport.errors import InvalidOptionError, RegressionError
from edgeport.export.onnx import export_onnx
from edgeport.quantize import QuantizeOptions, quantize

FAST = Settings(rounds=2, warmup=1, min_duration=0.02, min_count=3, pause=0.0)


def test_latency_stats_match_numpy():
    rng = np.random.default_rng(3)
    seconds = rng.gamma(4.0, 0.002, size=501)
    stats = latency_stats(seconds)
    ms = seconds * 1000
    assert stats.count == 501
    assert stats.mean_ms == pytest.approx(ms.mean())
    assert stats.std_ms == pytest.approx(ms.std(ddof=1))
    for name, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
        assert getattr(stats, name) == pytest.approx(np.percentile(ms, q))
    assert stats.min_ms == pytest.approx(ms.min()) and stats.max_ms == pytest.approx(ms.max())
    low, high = stats.median_ci95_ms
    assert low <= stats.p50_ms <= high


def test_median_interval_uses_the_binomial_order_statistics():
    values = np.arange(100, dtype=float)          # n=100: ranks 50 -/+ 9.8 -> 40 .. 59
    assert median_confidence_interval(values) == (40.0, 59.0)
    # Coverage: the interval holds the true median of a known distribution ~95% of the time.
    rng = np.random.default_rng(0)
    hits = sum(lo <= 1.0 <= hi for lo, hi in
               (median_confidence_interval(np.sort(rng.exponential(1 / np.log(2), 200))) for _ in range(400)))
    assert 0.92 <= hits / 400 <= 0.98


def test_poisson_schedule_has_the_rate_and_exponential_spacing():
    rate = 50.0
    arrivals = poisson_arrivals(rate, 20000, seed=1)
    gaps = np.diff(np.concatenate([[0.0], arrivals]))
    assert np.all(gaps > 0)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)          # exponential: CV = 1
    assert (gaps < 1 / rate).mean() == pytest.approx(1 - np.exp(-1), abs=0.02)
    assert len(arrivals) / arrivals[-1] == pytest.approx(rate, rel=0.03)
    np.testing.assert_array_equal(arrivals, poisson_arrivals(rate, 20000, seed=1))   # reproducible


def test_interrupt_keeps_what_was_measured():
    calls = {"n": 0}

    def run(feeds):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt

    samples = interleaved_latency({"a": run}, [{}], Settings(rounds=5, warmup=1, min_duration=0, min_count=4, pause=0))
    assert "__interrupted__" in samples and len(samples["a"]) >= 4


@pytest.fixture(scope="module")
def two_artifacts(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("bench")
    fp32 = export_onnx(tiny_models("bert", "feature-extraction"), root / "fp32")
    int8 = quantize(fp32.path, root / "int8", QuantizeOptions(mode="int8-dynamic"))
    return fp32, int8


def test_bench_end_to_end_json_and_html(two_artifacts, tmp_path, cli):
    fp32, int8 = two_artifacts
    result = cli("bench", fp32.path, int8.path, "--scenario", "single-stream", "--scenario", "offline",
                 "--scenario", "sweep", "--scenario", "server", "--batch-sizes", "1,4", "--sequence-lengths", "8,32",
                 "--queries", "20", "--p99-bound-ms", "1000", "--rounds", "2", "--min-duration", "0.02",
                 "--min-count", "3", "--json", tmp_path / "r.json", "--html", tmp_path / "r.html", "--min-cosine", "0.9")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    names = [v["name"] for v in report["variants"]]
    assert names == ["fp32", "int8"]
    scenarios = {(r["variant"], r["scenario"]) for r in report["results"]}
    assert scenarios == {(n, s) for n in names for s in ("single-stream", "offline", "sweep", "server")}
    sweep = [r for r in report["results"] if r["scenario"] == "sweep" and r["variant"] == "fp32"]
    assert sorted((r["params"]["batch"], r["params"]["sequence"]) for r in sweep) == [(1, 8), (1, 32), (4, 8), (4, 32)]
    server = [r for r in report["results"] if r["scenario"] == "server"]
    assert all(r["bound_held"] is True for r in server)
    for variant in report["variants"]:
        assert variant["size_bytes"] > 0 and variant["peak_rss_mb"] > 10 and variant["provider"] == "CPUExecutionProvider"
    assert report["parity"]["fp32"]["passed"] and report["parity"]["int8"]["sentence_embedding"]["min_cosine"] > 0.9
    assert report["machine"]["cores"] >= 1 and "onnxruntime" in report["machine"]["versions"]
    assert "p50 ms" in result.output and "parity vs reference" in result.output

    page = (tmp_path / "r.html").read_text()

    class Collector(HTMLParser):
        def __init__(self):
            super().__init__()
            self.svgs, self.external = [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "svg":
                self.svgs.append(attrs.get("aria-label"))
            for key in ("src", "href"):
                if key in attrs:
                    self.external.append(attrs[key])
            if tag in ("script", "link", "img", "iframe"):
                self.external.append(tag)

    collector = Collector()
    collector.feed(page)
    assert collector.svgs == ["latency distribution per variant", "samples / s against batch size",
                              "p50 ms against sequence length", "parity per variant"]
    assert collector.external == []                      # self-contained: nothing to fetch
    assert len(re.findall(r"<polyline", page)) == 4      # two variants x two line charts


def test_server_bound_can_be_missed_and_max_qps_found(two_artifacts):
    fp32, _ = two_artifacts
    report = run_bench([str(fp32.path)], BenchOptions(scenarios=["server"], server_queries=15, p99_bound_ms=1e-6,
                                                      settings=FAST, measure_memory=False))
    assert report.results[0]["bound_held"] is False
    report = run_bench([str(fp32.path)], BenchOptions(scenarios=["server"], server_queries=15, p99_bound_ms=2000,
                                                      find_max_qps=True, settings=FAST, measure_memory=False))
    row = report.results[0]
    assert row["max_qps"] > 0 and len(row["max_qps_probes"]) == 6
    assert all(p["held"] == (p["p99_ms"] <= 2000) for p in row["max_qps_probes"])


def test_torch_baseline_row(two_artifacts):
    fp32, _ = two_artifacts
    report = run_bench([str(fp32.path)], BenchOptions(baseline_torch=True, settings=FAST, measure_memory=False))
    assert [v["kind"] for v in report.variants] == ["onnx", "torch"]
    assert {r["variant"] for r in report.results} == {"fp32", "torch (eager FP32)"}


def test_bad_bench_options(cli, two_artifacts, tmp_path):
    fp32, _ = two_artifacts
    result = cli("bench", fp32.path, "--batch-sizes", "1,x")
    assert result.exit_code == InvalidOptionError.exit_code and "--batch-sizes" in result.output
    result = cli("bench", fp32.path, "--find-max-qps", "--scenario", "server")
    assert result.exit_code == InvalidOptionError.exit_code and "--p99-bound-ms" in result.output
    result = cli("bench", tmp_path / "missing")
    assert result.exit_code == 7 and "does not exist" in result.output


# ------------------------------------------------------------------------ compare


def _report(p50: float, throughput: float, min_cos: float) -> dict:
    latency = {"count": 10, "mean_ms": p50, "std_ms": 0.1, "min_ms": p50, "max_ms": p50, "p50_ms": p50,
               "p90_ms": p50, "p99_ms": p50, "median_ci95_ms": [p50, p50]}
    return {"schema_version": 1, "created": "t", "machine": {"cpu": "x", "cores": 2, "versions": {}}, "reference": "r",
            "interrupted": False,
            "variants": [{"name": "int8", "kind": "onnx", "precision": "int8-dynamic", "provider": "cpu",
                          "session_create_ms": 1.0}],
            "results": [{"variant": "int8", "scenario": "single-stream", "params": {"batch": 1}, "latency": latency,
                         "throughput_per_s": 1000 / p50},
                        {"variant": "int8", "scenario": "offline", "params": {"batch": 8}, "latency": latency,
                         "throughput_per_s": throughput}],
            "parity": {"int8": {"passed": True, "outputs": {"y": {"min_cosine": min_cos, "mean_cosine": min_cos,
                                                                  "max_abs_err": 0.1}}}}}


@pytest.mark.parametrize("new,code,phrase", [
    (_report(10.3, 98.0, 0.9950), 0, "+3.0%"),                 # within 5%
    (_report(11.0, 100.0, 0.9950), 16, "p50_ms 10 -> 11"),     # latency +10%
    (_report(10.0, 90.0, 0.9950), 16, "throughput_per_s 100 -> 90"),
    (_report(10.0, 100.0, 0.9900), 16, "min_cosine 0.995 -> 0.99"),
])
def test_compare_exit_codes(cli, tmp_path, new, code, phrase):
    old = _report(10.0, 100.0, 0.9950)
    jsonschema.validate(old, REPORT_SCHEMA)
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    result = cli("bench", "compare", tmp_path / "old.json", tmp_path / "new.json", "--max-regression", "5%")
    assert result.exit_code == code, result.output
    assert phrase in result.output


def test_compare_lists_unmatched_rows_and_rejects_bad_files(cli, tmp_path):
    old, new = _report(10, 100, 0.99), _report(10, 100, 0.99)
    new["results"][0]["params"] = {"batch": 2}
    deltas, unmatched = compare(old, new, 0.05, 0.001)
    assert len(unmatched) == 2 and all(not d.regressed for d in deltas)
    (tmp_path / "bad.json").write_text("{}")
    (tmp_path / "old.json").write_text(json.dumps(old))
    result = cli("bench", "compare", tmp_path / "old.json", tmp_path / "bad.json")
    assert result.exit_code == 2 and "not an edgeport bench report" in result.output
    result = cli("bench", "compare", tmp_path / "old.json", tmp_path / "old.json", "--max-regression", "lots")
    assert result.exit_code == 2 and "not a percentage" in result.output
    with pytest.raises(RegressionError):
        from edgeport.bench.compare import raise_for_regressions
        raise_for_regressions(compare(old, _report(20, 100, 0.99), 0.05, 0.001)[0], 0.05, 0.001)
