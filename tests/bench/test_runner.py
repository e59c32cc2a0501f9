"""edgeport bench end to end: scenarios, reports, parity, memory, the PyTorch baseline, and
everything refused before the first measurement."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

from edgeport.bench.report import REPORT_SCHEMA
from edgeport.bench.runner import BenchOptions, ReportFiles, Variant, run_bench
from edgeport.bench.scenarios import Settings
from edgeport.errors import InvalidOptionError, OutputExistsError, StoppedByUser
from edgeport.quantize import QuantizeOptions, quantize
from edgeport.runtime.runner import Runner
from edgeport.schema import problems
from edgeport.speed.wakeup import slow_wake_warning
from helpers import assert_fails

FAST = Settings(rounds=2, warmup=1, min_duration=0.02, min_count=3, pause=0.0)
FAST_ARGS = ("--rounds", "2", "--min-duration", "0.02", "--min-count", "3")


@pytest.fixture(scope="module")
def two_artifacts(onnx_artifacts, tmp_path_factory):
    fp32 = onnx_artifacts["encoder"]
    int8 = quantize(fp32.path, tmp_path_factory.mktemp("bench") / "int8", QuantizeOptions(mode="int8-dynamic"))
    return fp32, int8


def test_bench_end_to_end_json_html_and_table(two_artifacts, tmp_path, cli):
    fp32, int8 = two_artifacts
    result = cli("bench", fp32.path, int8.path, "--scenario", "single-stream", "--scenario", "offline",
                 "--scenario", "sweep", "--scenario", "server", "--batch-sizes", "1,4", "--sequence-lengths", "8,32",
                 "--queries", "20", "--p99-bound-ms", "1000", *FAST_ARGS, "--json", tmp_path / "r.json",
                 "--html", tmp_path / "r.html", "--min-cosine", "0.9")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    assert problems(report, REPORT_SCHEMA) == []           # edgeport's own validator agrees
    names = [v["name"] for v in report["variants"]]
    assert names == ["encoder", "int8"]
    scenarios = {(r["variant"], r["scenario"]) for r in report["results"]}
    assert scenarios == {(n, s) for n in names for s in ("single-stream", "offline", "sweep", "server")}
    sweep = [r for r in report["results"] if r["scenario"] == "sweep" and r["variant"] == "encoder"]
    assert sorted((r["params"]["batch"], r["params"]["sequence"]) for r in sweep) == [(1, 8), (1, 32), (4, 8), (4, 32)]
    assert all(r["bound_held"] is True for r in report["results"] if r["scenario"] == "server")
    speedups = [r["speedup"] for r in report["results"] if r["scenario"] == "single-stream"]
    assert speedups[0]["value"] == pytest.approx(1.0)
    assert all(s["ci95"][0] <= s["value"] <= s["ci95"][1] for s in speedups)
    for variant in report["variants"]:
        assert variant["size_bytes"] > 0 and variant["peak_rss_mb"] > 10 and variant["provider"] == "CPUExecutionProvider"
        assert len(variant["manifest_sha256"]) == 64
    assert report["parity"]["encoder"]["passed"] and report["parity"]["int8"]["sentence_embedding"]["min_cosine"] > 0.9
    assert report["machine"]["cores"] >= 1 and "onnxruntime" in report["machine"]["versions"]
    assert report["settings"]["spinning"].startswith("off")                 # the default: variants take turns
    wakeup = report["machine"]["thread_wakeup"]                            # measured here, whatever it says
    assert "method" in wakeup and (wakeup["wake_us"] is None) == (len(os.sched_getaffinity(0)) < 2)
    assert any("to wake on this host" in w for w in report["warnings"]) == (
        slow_wake_warning(wakeup, report["settings"]["threads"], spinning=False) is not None)
    assert "p50 ms" in result.output and "speed-up (95% CI)" in result.output
    assert "<table" in (tmp_path / "r.html").read_text()


def test_offline_throughput_counts_the_rows_actually_run(two_artifacts):
    fp32, _ = two_artifacts
    report = run_bench([str(fp32.path)], BenchOptions(scenarios=["offline"], batch_sizes=[100], settings=FAST,
                                                      measure_memory=False))
    row = report.results[0]
    assert row["params"]["batch"] == 100
    assert row["throughput_per_s"] == pytest.approx(100 * 1000.0 / row["latency"]["p50_ms"])


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
    # A bound no rate can hold: one probe at the lowest rate, not six of the same; 0 found.
    report = run_bench([str(fp32.path)], BenchOptions(scenarios=["server"], server_queries=15, p99_bound_ms=1e-6,
                                                      find_max_qps=True, settings=FAST, measure_memory=False))
    row = report.results[0]
    assert row["max_qps"] == 0 and len(row["max_qps_probes"]) == 1 and not row["max_qps_probes"][0]["held"]


def test_the_server_row_reports_what_one_worker_served_not_the_offered_rate(two_artifacts):
    fp32, _ = two_artifacts
    report = run_bench([str(fp32.path)], BenchOptions(scenarios=["server"], server_queries=30, server_rate=1e6,
                                                      settings=FAST, measure_memory=False))
    row = report.results[0]
    assert row["params"]["rate_per_s"] == 1e6
    assert 0 < row["throughput_per_s"] < 1e5           # one worker, tens of microseconds a call at the least


class _StopsAt(Runner):
    """A runner whose user presses Ctrl-C once it is handed a batch of ``rows`` rows."""

    def __init__(self, inner: Runner, rows: int):
        super().__init__(list(inner.inputs.values()), inner.output_names, "test")
        self.inner, self.rows = inner, rows

    def _infer(self, feeds):
        if len(next(iter(feeds.values()))) >= self.rows:
            raise KeyboardInterrupt
        return self.inner.run(feeds)


def _stopping_bench(fp32, json_path, stop_rows: int, force: bool = False):
    from edgeport.runtime import load

    stopper = _StopsAt(load(fp32.path).runner, stop_rows)
    extra = Variant("stops", stopper, {"name": "stops", "kind": "onnx", "precision": "fp32", "provider": "test",
                                       "session_create_ms": 0.0})
    options = BenchOptions(scenarios=["single-stream", "offline"], batch_sizes=[2], measure_memory=False,
                           settings=Settings(rounds=2, warmup=1, min_duration=0, min_count=3, pause=0),
                           reports=ReportFiles(json=str(json_path), force=force))
    return run_bench([str(fp32.path)], options, [extra])


def test_ctrl_c_keeps_what_was_measured_and_exits_130(two_artifacts, tmp_path):
    fp32, _ = two_artifacts
    report = _stopping_bench(fp32, tmp_path / "partial.json", stop_rows=2)      # single-stream done, offline cut
    assert report.interrupted
    written = json.loads((tmp_path / "partial.json").read_text())
    assert written["interrupted"] is True
    assert {row["scenario"] for row in written["results"]} == {"single-stream"}
    with pytest.raises(StoppedByUser) as info:
        report.raise_for_failure()
    assert info.value.exit_code == 130 and "partial.json holds the rows measured" in str(info.value)


def test_ctrl_c_never_replaces_a_report_nor_writes_an_empty_one(two_artifacts, tmp_path):
    fp32, _ = two_artifacts
    report = _stopping_bench(fp32, tmp_path / "none.json", stop_rows=1)         # nothing complete
    assert not (tmp_path / "none.json").exists()
    with pytest.raises(StoppedByUser, match="no row was complete"):
        report.raise_for_failure()
    kept = tmp_path / "kept.json"
    run_bench([str(fp32.path)], BenchOptions(settings=FAST, measure_memory=False, reports=ReportFiles(json=str(kept))))
    complete = kept.read_text()
    report = _stopping_bench(fp32, kept, stop_rows=2, force=True)
    assert kept.read_text() == complete
    with pytest.raises(StoppedByUser, match="kept as it was"):
        report.raise_for_failure()


def test_torch_baseline_row(tmp_path, tiny_models):
    from edgeport.artifact import Artifact
    from edgeport.export.baseline import TorchRunner
    from edgeport.export.onnx import export_onnx

    fp32 = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "fp32")
    runner = TorchRunner(Artifact.load(fp32.path))
    extra = Variant("torch", runner, {"name": "torch", "kind": "torch", "precision": "fp32", "provider": runner.device,
                                      "size_bytes": None, "session_create_ms": 1.0})
    report = run_bench([str(fp32.path)], BenchOptions(settings=FAST, measure_memory=False), [extra])
    assert [v["kind"] for v in report.variants] == ["onnx", "torch"]
    assert {r["variant"] for r in report.results} == {"fp32", "torch"}
    assert report.parity["torch"]["passed"] and report.parity["torch"]["outputs"]["last_hidden_state"]["max_abs_err"] < 1e-4


@pytest.mark.slow
def test_peak_memory_is_each_variants_own(minilm_onnx, tmp_path):
    """A quarter of the weights must show as clearly less peak memory, measured in one run
    (a probe that inherited the bench's high-water mark reported the same for both)."""
    minilm_int8 = quantize(minilm_onnx.path, tmp_path / "int8",
                           QuantizeOptions(mode="int8-dynamic", worst_case_guard=False))
    report = run_bench([str(minilm_onnx.path), str(minilm_int8.path)],
                       BenchOptions(settings=FAST, scenarios=["single-stream"]))
    fp32, int8 = report.variants
    assert minilm_int8.size_bytes() < 0.3 * minilm_onnx.size_bytes()
    assert int8["peak_rss_mb"] < fp32["peak_rss_mb"] - 40, (fp32, int8)
    for variant in (fp32, int8):
        assert variant["peak_rss_mb"] > variant["rss_before_load_mb"] > 20


# ------------------------------------------------------------------------ refused before measuring


def test_report_files_are_checked_before_measuring(cli, two_artifacts, tmp_path):
    fp32, _ = two_artifacts
    manifest_before = (fp32.path / "edgeport.json").read_bytes()
    assert_fails(cli("bench", fp32.path, "--json", fp32.path / "edgeport.json", "--force", *FAST_ARGS),
                 InvalidOptionError.exit_code, "lies inside the input")
    assert (fp32.path / "edgeport.json").read_bytes() == manifest_before
    existing = tmp_path / "notes.json"
    existing.write_text('{"mine": true}')
    assert_fails(cli("bench", fp32.path, "--json", existing, *FAST_ARGS), OutputExistsError.exit_code, "--force")
    assert_fails(cli("bench", fp32.path, "--json", existing, "--force", *FAST_ARGS), OutputExistsError.exit_code,
                 "not an edgeport bench report")
    assert existing.read_text() == '{"mine": true}'
    (tmp_path / "afile").write_text("x")
    assert_fails(cli("bench", fp32.path, "--html", tmp_path / "afile" / "r.html", *FAST_ARGS),
                 InvalidOptionError.exit_code, "is a file, not a folder")
    assert_fails(cli("bench", fp32.path, "--json", tmp_path / "same", "--html", tmp_path / "same", *FAST_ARGS),
                 InvalidOptionError.exit_code, "same file")
    assert_fails(cli("bench", fp32.path, "--json", tmp_path / "same", "--html", tmp_path / "." / "same", *FAST_ARGS),
                 InvalidOptionError.exit_code, "same file")                 # one file, spelled two ways
    assert not (tmp_path / "same").exists()


@pytest.mark.parametrize("args,phrase", [
    (("--rounds", "0"), "--rounds"), (("--min-count", "0", "--min-duration", "0"), "--min-count"),
    (("--queries", "0", "--scenario", "server"), "--queries"), (("--rate", "-5", "--scenario", "server"), "--rate"),
    (("--rate", "nan", "--scenario", "server"), "--rate"), (("--batch-sizes", "0"), "--batch-sizes"),
    (("--batch-sizes", "1,x"), "--batch-sizes"), (("--find-max-qps", "--scenario", "server"), "--p99-bound-ms"),
    (("--p99-bound-ms", "inf", "--scenario", "server"), "--p99-bound-ms"), (("--min-duration", "nan"), "--min-duration"),
    (("--min-cosine", "nan"), "finite"), (("--threads", "0"), "--threads"),
])
def test_bad_bench_arguments_fail_up_front(cli, two_artifacts, args, phrase):
    fp32, _ = two_artifacts
    assert_fails(cli("bench", fp32.path, *args), InvalidOptionError.exit_code, phrase)


def test_missing_artifact(cli, tmp_path):
    assert_fails(cli("bench", tmp_path / "missing"), 7, "does not exist")


def test_held_out_domain_parity(two_artifacts, cli):
    fp32, int8 = two_artifacts
    report = run_bench([str(fp32.path), str(int8.path)],
                       BenchOptions(settings=FAST, measure_memory=False, domains=["legal", "science"]))
    for name in ("encoder", "int8"):
        domains = report.parity[name]["domains"]
        assert set(domains) == {"legal", "science"} and domains["legal"]["samples"] == 300
        figures = domains["science"]
        assert figures["min_cosine"] <= figures["p01_cosine"] <= figures["mean_cosine"] <= 1.0 + 1e-9
    assert report.parity["encoder"]["domains"]["legal"]["min_cosine"] > 0.99999
    assert "held-out domains" in report.table()
    written = json.loads(json.dumps(report.to_dict()))
    jsonschema.validate(written, REPORT_SCHEMA)
    assert problems(written, REPORT_SCHEMA) == []
    result = cli("bench", fp32.path, "--domains", "poetry")
    assert result.exit_code == 2 and "unknown domain poetry" in result.output


def test_held_out_domains_of_a_model_without_text_are_refused_before_measuring(onnx_artifacts, tmp_path, cli):
    result = cli("bench", onnx_artifacts["classifier"].path, "--domains", "legal", "--json", tmp_path / "r.json")
    assert result.exit_code == 2 and "takes no text" in result.output
    assert "memory and cold start" not in result.output and not (tmp_path / "r.json").exists()


def test_text_options_are_refused_for_models_without_text(onnx_artifacts):
    """Sweep (sequence lengths), held-out domains and the speed of light (GEMMs per token)
    would time or report nothing for a model that takes no text: refused before any work."""
    for options in (BenchOptions(scenarios=["sweep", "offline"], batch_sizes=[3]), BenchOptions(domains=["legal"]),
                    BenchOptions(speed_of_light=True)):
        with pytest.raises(InvalidOptionError, match="does not apply to a model that takes no text"):
            run_bench([str(onnx_artifacts["classifier"].path)], options)


def test_speed_of_light_gives_each_variant_its_floor(two_artifacts, cli, tmp_path):
    """The floor is the variant's weight GEMMs at this machine's peak for its precision: the
    INT8 row is measured against the INT8 peak, with the same matrix work as FP32's."""
    fp32, int8 = two_artifacts
    result = cli("bench", fp32.path, int8.path, *FAST_ARGS, "--no-memory", "--speed-of-light",
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    light = {r["variant"]: r["speed_of_light"] for r in report["results"]}
    assert light[fp32.path.name]["peak"] == "fp32" and light[int8.path.name]["peak"] == "int8"
    assert light[fp32.path.name]["gemm_gops_per_call"] == pytest.approx(light[int8.path.name]["gemm_gops_per_call"],
                                                                        rel=0.05)
    assert all(0 < figure["fraction"] < 1 and figure["floor_ms"] > 0 for figure in light.values())
    assert report["machine"]["gemm_peaks_gops"]["int8"] > 0 and "of its INT8 floor" in result.output
