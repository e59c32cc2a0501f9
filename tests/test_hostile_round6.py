"""The sixth hostile pass: bench (its reports, compare, the generation bench), verify, inspect
and Keras export as a benchmarking engineer misuses them.  (Ctrl-C during a bench is tested
beside the runner, tests/bench/test_runner.py; Keras options in tests/export/test_keras.py.)"""

from __future__ import annotations

import json
import shutil

import pytest

from edgeport.errors import InvalidOptionError, RegressionError
from helpers import assert_fails

QUICK = ("--rounds", "2", "--min-duration", "0", "--min-count", "3", "--no-memory")


def test_speed_ups_say_what_they_are_against_and_the_first_row_is_exactly_one(cli, onnx_artifacts, tmp_path):
    """Speed-ups are against the first variant, parity against --reference: the table and the
    page say so, and the first variant's own row is 1, not a ratio of two resamplings."""
    first = onnx_artifacts["encoder"].path
    second = tmp_path / "p$x^2$q"                 # matplotlib would read $...$ as TeX
    shutil.copytree(first, second)
    result = cli("bench", first, second, "--reference", second, *QUICK, "--json", tmp_path / "r.json",
                 "--html", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert f"speed-ups against {first.name} (the first variant); parity against {second}" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    own = next(row for row in report["results"] if row["variant"] == first.name)
    assert own["speedup"]["value"] == 1.0 and own["speedup"]["method"].startswith("itself")
    assert f"{first.name[:28]:<28}" in result.output and "1.00x (itself)" in result.output
    page = (tmp_path / "r.html").read_text()
    assert f"Speed-up against {first.name} (the first variant)" in page and "p$x^2$q" in page
    assert "<td>itself</td>" in page


def test_options_the_chosen_scenarios_ignore_are_refused(cli, onnx_artifacts, tmp_path):
    encoder, report = onnx_artifacts["encoder"].path, tmp_path / "r.json"
    for options, phrase in ((("--batch-sizes", "3"), "--batch-sizes does not apply"),
                            (("--sequence-lengths", "7", "--scenario", "offline"), "--sequence-lengths does not apply"),
                            (("--queries", "3"), "--queries does not apply"),
                            (("--max-new-tokens", "3"), "--max-new-tokens does not apply to models other than"),
                            (("--baseline-device", "cuda"), "add --baseline torch"),
                            (("--min-count", "20000"), "--min-count must be at most 10000"),
                            (("--json", ""), "--json needs a file name")):
        assert_fails(cli("bench", encoder, *QUICK, *options, "--json", report) if options[0] != "--json"
                     else cli("bench", encoder, *QUICK, *options), InvalidOptionError.exit_code, phrase, absent=report)


def test_a_missed_p99_bound_fails_the_run_and_keeps_the_report(cli, onnx_artifacts, tmp_path):
    result = cli("bench", onnx_artifacts["encoder"].path, *QUICK, "--scenario", "server", "--queries", "5",
                 "--p99-bound-ms", "0.000001", "--json", tmp_path / "r.json")
    assert_fails(result, RegressionError.exit_code, "p99 latency bound of 1e-06 ms was missed")
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["bound_held"] is False


def test_compare_matches_server_rows_at_the_default_rate_and_refuses_edited_reports(cli, onnx_artifacts, tmp_path):
    encoder = onnx_artifacts["encoder"].path
    for name in ("a.json", "b.json"):
        result = cli("bench", encoder, *QUICK, "--scenario", "server", "--queries", "10", "--json", tmp_path / name)
        assert result.exit_code == 0, result.output
    # The default rate (half the capacity measured in that run) differs every run; the rows still match.
    result = cli("bench", "compare", tmp_path / "a.json", tmp_path / "b.json", "--max-regression", "10000%")
    assert result.exit_code == 0, result.output
    edited = json.loads((tmp_path / "b.json").read_text())
    edited["results"][0]["latency"]["p50_ms"] *= 3
    (tmp_path / "edited.json").write_text(json.dumps(edited, indent=2))
    assert_fails(cli("bench", "compare", tmp_path / "a.json", tmp_path / "edited.json", "--max-regression", "10000%"),
                 RegressionError.exit_code, "changed since bench wrote it")
    del edited["edgeport-content-sha256"]          # a seal cut out cannot be told from an older report: said
    (tmp_path / "unsealed.json").write_text(json.dumps(edited))
    result = cli("bench", "compare", tmp_path / "a.json", tmp_path / "unsealed.json", "--max-regression", "10000%")
    assert result.exit_code == 0 and "unsealed.json carries no seal" in result.output, result.output
    edited["results"][0]["latency"]["p50_ms"] = 0
    (tmp_path / "zero.json").write_text(json.dumps(edited))
    assert_fails(cli("bench", "compare", tmp_path / "zero.json", tmp_path / "a.json"), InvalidOptionError.exit_code,
                 "p50_ms' must be > 0 (got 0)")
    assert_fails(cli("bench", "compare", tmp_path / "a.json", tmp_path / "b.json", "--max-regression", "5%%"),
                 InvalidOptionError.exit_code, "is not a percentage")


def test_verify_limit_means_at_most_and_inspect_refuses_a_malformed_digest(cli, onnx_artifacts):
    encoder = onnx_artifacts["encoder"].path
    result = cli("verify", encoder, "--reference", encoder, "--limit", "100000000")
    assert result.exit_code == 0, result.output
    assert "1681 standard-library docstring sentences" in result.output
    for digest in ("zz", ""):
        assert_fails(cli("inspect", encoder, "--expect-manifest-sha256", digest), InvalidOptionError.exit_code,
                     "64 hexadecimal digits")


def test_the_report_names_the_openmp_policy_in_force(monkeypatch):
    from edgeport.bench.scenarios import spinning_policy

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")     # the user's choice, which the baseline keeps
    assert "OpenMP pool active (OMP_WAIT_POLICY=ACTIVE)" in spinning_policy(False)
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert "OpenMP pool passive (OMP_WAIT_POLICY=PASSIVE)" in spinning_policy(False)


@pytest.mark.slow
def test_the_generation_bench_names_each_variant_once_and_refuses_what_it_ignores(cli, lms, onnx_artifacts,
                                                                                   tmp_path):
    lm = lms("llama")["onnx"].path
    folders = [tmp_path / "g1" / "a", tmp_path / "g2" / "a (2)", tmp_path / "g3" / "a",
               tmp_path / "g4" / "torch (eager FP32, cpu)"]
    for folder in folders:
        shutil.copytree(lm, folder)
    result = cli("bench", *folders, "--baseline", "torch", "--rounds", "1", "--no-memory", "--max-new-tokens", "2",
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert len(set(names)) == 5 and {r["variant"] for r in report["results"]} == set(names)
    assert "torch (eager FP32, cpu) (2)" in names
    assert all(r["params"]["prompts"] == 4 for r in report["results"])
    for options in (("--reference", onnx_artifacts["encoder"].path, "--baseline", "torch"),
                    ("--data", tmp_path / "r.json"), ("--device", "cuda"), ("--min-cosine", "0.9"),
                    ("--speed-of-light",), ("--min-duration", "5")):
        assert_fails(cli("bench", lm, "--rounds", "1", "--no-memory", *options), InvalidOptionError.exit_code,
                     "does not apply to causal LMs")


def test_a_failed_memory_probe_is_a_warning_not_a_silent_dash():
    from edgeport.bench.report import BenchReport

    report = BenchReport(created="now", machine={}, results=[], parity={}, reference="a",
                         variants=[{"name": "a", "peak_rss_mb": None, "memory_probe_error": "no module named x"}])
    report.judge_machine()
    assert "the memory and cold-start probe of a failed: no module named x" in report.warnings


@pytest.mark.slow
def test_ctrl_c_while_quantize_times_its_result_exits_130_with_nothing_written(minilm_onnx, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "int8"
    process = subprocess.Popen([sys.executable, "-m", "edgeport", "quantize", str(minilm_onnx.path), "-o", str(out),
                                "--mode", "int8-dynamic"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:                  # progress goes to stderr, one line a step
        seen.append(line)
        if line.startswith("timing INT8 against FP32"):
            process.send_signal(signal.SIGINT)
            break
    rest = process.communicate(timeout=120)[1]
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr
    assert "error: interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_static_shape_exports_quantize(tiny_models, tmp_path):
    """The golden inputs (24 rows) run through a batch-1 graph in rows of one."""
    from edgeport.export.onnx import ExportOptions, export_onnx
    from edgeport.quantize import QuantizeOptions, quantize

    fp32 = export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "fp32",
                       ExportOptions(static_shapes=True, sequence_length=16))
    for mode in ("fp16", "int8-dynamic"):
        result = quantize(fp32.path, tmp_path / mode, QuantizeOptions(mode=mode))
        assert result.manifest.parity["quantize"]["passed"]


def test_data_files_that_carry_nothing_are_refused(cli, onnx_artifacts, tmp_path):
    import numpy as np

    encoder, out = onnx_artifacts["encoder"].path, tmp_path / "out"
    ids = np.random.default_rng(0).integers(5, 20, (4, 8))
    np.savez(tmp_path / "masked.npz", input_ids=ids, attention_mask=0 * ids)
    (tmp_path / "empty_text.jsonl").write_text('{"text": "a real line"}\n{"text": "  "}\n')
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(1).bytes(4096))
    (tmp_path / "UPPER.NPZ").write_bytes((tmp_path / "masked.npz").read_bytes())
    for data, phrase in (("masked.npz", "masks every token of row 0"), ("empty_text.jsonl", "'text' is empty"),
                         ("random.npz", "is not an .npz archive"), ("UPPER.NPZ", "masks every token of row 0")):
        for command in (("quantize", encoder, "-o", out, "--mode", "int8-dynamic", "--data", tmp_path / data),
                        ("verify", encoder, "--reference", encoder, "--data", tmp_path / data)):
            assert_fails(cli(*command), 10, phrase, absent=out)


def test_quantize_refuses_options_its_mode_ignores(cli, onnx_artifacts, tmp_path):
    encoder, out = onnx_artifacts["encoder"].path, tmp_path / "out"
    for options, phrase in ((("--mode", "fp16", "--optimize"), "--optimize does not apply to --mode fp16"),
                            (("--mode", "fp16", "--per-tensor"), "--per-tensor does not apply to --mode fp16"),
                            (("--mode", "int8-dynamic", "--calibration-method", "entropy"),
                             "--calibration-method does not apply to --mode int8-dynamic"),
                            (("--mode", "int8-static", "--calib", tmp_path, "--no-worst-case-guard"),
                             "--no-worst-case-guard does not apply to --mode int8-static"),
                            (("--mode", "int4", "--calibration-method", "minmax"),
                             "--calibration-method does not apply to --mode int4"),
                            (("--mode", "int8-dynamic", "--no-smooth", "--smooth-alpha", "0.3"), "give one of them"),
                            (("--mode", "int8-dynamic", "--no-worst-case-guard", "--max-kept-nodes", "2"),
                             "with neither it would change nothing"),
                            (("--mode", "int4", "--block-size", "4096"),
                             "--block-size must be 16, 32, 64, 128 or 256")):
        assert_fails(cli("quantize", encoder, "-o", out, *options), InvalidOptionError.exit_code, phrase, absent=out)


def test_export_refuses_what_it_would_drop_and_a_head_the_checkpoint_lacks(cli, tiny_models, minilm_onnx, tmp_path):
    base, out = tiny_models("bert", "feature-extraction"), tmp_path / "out"    # saved without a classifier
    assert_fails(cli("export", "onnx", base, "-o", out, "--task", "text-classification"), 3,
                 "hold no text-classification head", "initialised at random", absent=out)
    # A token classifier has no pooler, which a BERT sequence classifier reads: random too.
    assert_fails(cli("export", "onnx", tiny_models("bert", "token-classification"), "-o", out, "--task",
                     "text-classification"), 3, "bert.pooler.dense", absent=out)
    assert_fails(cli("export", "onnx", base, "-o", out, "--output-name", "y"), InvalidOptionError.exit_code,
                 "--output-name is only for module:callable sources", absent=out)
    assert_fails(cli("export", "onnx", base, "-o", out, "--no-validate", "--atol", "1e-9"),
                 InvalidOptionError.exit_code, "the parity check --no-validate skips", absent=out)
    assert_fails(cli("export", "tensorrt", minilm_onnx.path, "--dry-run", "-o", out), InvalidOptionError.exit_code,
                 "-o/--output does not apply to --dry-run", absent=out)


def test_another_architectures_target_is_not_timed_here():
    from edgeport.quantize.targets import TARGETS, detect_host, runs_here

    host = detect_host()
    others = [name for name in TARGETS if name.startswith("x86") != host.startswith("x86") and name != "gpu"]
    assert others and not any(runs_here(TARGETS[name]) for name in others)
    assert runs_here(TARGETS[host])


def test_tensorrt_via_onnxruntime_names_what_that_route_needs(cli, minilm_onnx, tmp_path):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT execution provider")
    assert_fails(cli("export", "tensorrt", minilm_onnx.path, "-o", tmp_path / "engine", "--via", "onnxruntime"), 17,
                 "install onnxruntime-gpu", absent=tmp_path / "engine")


def test_images_in_the_wrong_layout_are_bad_data_not_a_bad_request(cli, tiny_models, tmp_path):
    import numpy as np

    from edgeport.export.onnx import export_onnx

    vit = export_onnx(tiny_models("vit", "image-classification"), tmp_path / "vit")      # takes NCHW
    size = vit.manifest.processing["image"]["size"]
    np.savez(tmp_path / "nhwc.npz", pixel_values=np.zeros((4, *size, 3), np.uint8))
    assert_fails(cli("quantize", vit.path, "-o", tmp_path / "out", "--mode", "int8-static", "--calib",
                     tmp_path / "nhwc.npz"), 10, "nhwc.npz", "NCHW layout", absent=tmp_path / "out")
