"""bench compare: exit codes, rows that vanished, interrupted reports, malformed reports
(table-driven, and a fuzz over every field of a valid report)."""

from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest

from edgeport.bench.compare import compare
from edgeport.bench.report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION
from edgeport.errors import InvalidOptionError, RegressionError
from fuzzing import mutations
from helpers import assert_fails


def _report(p50: float, throughput: float, min_cos: float, version: int = REPORT_SCHEMA_VERSION) -> dict:
    latency = {"count": 10, "mean_ms": p50, "std_ms": 0.1, "min_ms": p50, "max_ms": p50, "p50_ms": p50,
               "p90_ms": p50, "p99_ms": p50, "median_ci95_ms": [p50, p50]}
    return {"schema_version": version, "created": "t", "machine": {"cpu": "x", "cores": 2, "versions": {}},
            "reference": "r", "interrupted": False,
            "variants": [{"name": "int8", "kind": "onnx", "precision": "int8-dynamic", "provider": "cpu",
                          "session_create_ms": 1.0}],
            "results": [{"variant": "int8", "scenario": "single-stream", "params": {"batch": 1}, "latency": latency,
                         "throughput_per_s": 1000 / p50},
                        {"variant": "int8", "scenario": "offline", "params": {"batch": 8}, "latency": latency,
                         "throughput_per_s": throughput}],
            "parity": {"int8": {"passed": True, "outputs": {"y": {"min_cosine": min_cos, "mean_cosine": min_cos,
                                                                  "max_abs_err": 0.1}}}}}


def _write(tmp_path, old, new):
    """Both reports sealed, as bench writes them (an unsealed one gets a note)."""
    from edgeport.outputs import SEAL_KEY, seal, seal_placeholder

    for name, report in (("old.json", old), ("new.json", new)):
        (tmp_path / name).write_text(seal(json.dumps({**report, SEAL_KEY: seal_placeholder()}, indent=2) + "\n"))
    return tmp_path / "old.json", tmp_path / "new.json"


@pytest.mark.parametrize("new,code,phrase", [
    (_report(10.3, 98.0, 0.9950), 0, "+3.0%"),                 # within 5%
    (_report(11.0, 100.0, 0.9950), 16, "p50_ms 10 -> 11"),     # latency +10%
    (_report(10.0, 90.0, 0.9950), 16, "throughput_per_s 100 -> 90"),
    (_report(10.0, 100.0, 0.9900), 16, "min_cosine 0.995 -> 0.99"),
])
def test_compare_exit_codes(cli, tmp_path, new, code, phrase):
    old = _report(10.0, 100.0, 0.9950)
    jsonschema.validate(old, REPORT_SCHEMA)
    result = cli("bench", "compare", *_write(tmp_path, old, new), "--max-regression", "5%")
    assert result.exit_code == code, result.output
    assert phrase in result.output


def test_compare_notes_a_different_footing(cli, tmp_path):
    old, new = _report(10.0, 100.0, 0.9950), _report(10.0, 100.0, 0.9950)
    same = cli("bench", "compare", *_write(tmp_path, old, new))
    assert same.exit_code == 0 and "note:" not in same.output
    old["settings"] = {"threads": 2, "spinning": "off: x"}
    new["settings"] = {"threads": 2, "spinning": "on (--spinning)"}
    old["machine"]["thread_wakeup"], new["machine"]["thread_wakeup"] = {"wake_us": 36.0}, {"wake_us": 4.0}
    new["machine"]["cpu"] = "y"
    result = cli("bench", "compare", *_write(tmp_path, old, new))
    assert result.exit_code == 0, result.output                              # notes, not failures
    assert "note: the reports come from different CPUs (x / y)" in result.output
    assert "note: different spinning: off in the old report, on (--spinning) in the new" in result.output
    assert "note: a sleeping thread woke in 36 us on the old report's machine and 4 us" in result.output
    old["machine"]["thread_wakeup"] = "fast"                                 # hand-edited: ignored, not a crash
    assert cli("bench", "compare", *_write(tmp_path, old, new)).exit_code == 0


@pytest.mark.parametrize("old_version", [1, 2])
def test_older_reports_are_still_read(cli, tmp_path, old_version):
    result = cli("bench", "compare", *_write(tmp_path, _report(10, 100, 0.99, version=old_version),
                                            _report(10, 100, 0.99)))
    assert result.exit_code == 0, result.output


def test_a_renamed_variant_does_not_pass_the_gate(cli, tmp_path):
    old, new = _report(10, 100, 0.99), _report(10, 100, 0.99)
    for row in new["results"]:
        row["variant"] = "int8-renamed"
    new["parity"] = {"int8-renamed": new["parity"]["int8"]}
    result = cli("bench", "compare", *_write(tmp_path, old, new))
    assert result.exit_code == RegressionError.exit_code
    assert "no match in the new one" in result.output and "no measurement of the new report" in result.output


def test_an_interrupted_new_report_does_not_pass_the_gate(cli, tmp_path):
    new = _report(10, 100, 0.99)
    new["interrupted"] = True
    result = cli("bench", "compare", *_write(tmp_path, _report(10, 100, 0.99), new))
    assert result.exit_code == RegressionError.exit_code and "interrupted" in result.output


def test_compare_lists_unmatched_rows(tmp_path):
    old, new = _report(10, 100, 0.99), _report(10, 100, 0.99)
    new["results"][0]["params"] = {"batch": 2}
    comparison = compare(old, new, 0.05, 0.001)
    assert len(comparison.only_old) == 1 and len(comparison.only_new) == 1
    assert all(not d.regressed for d in comparison.deltas)
    with pytest.raises(RegressionError, match="no match"):
        comparison.raise_for_failure()


@pytest.mark.parametrize("args,phrase", [
    (("--max-regression", "lots"), "not a percentage"), (("--max-regression", "nan%"), "finite"),
    (("--max-regression", "-5%"), ">= 0"), (("--max-parity-drop", "nan"), "finite"),
])
def test_bad_thresholds(cli, tmp_path, args, phrase):
    result = cli("bench", "compare", *_write(tmp_path, _report(10, 100, 0.99), _report(10, 100, 0.99)), *args)
    assert result.exit_code == InvalidOptionError.exit_code and phrase in result.output, result.output


@pytest.mark.parametrize("edit,phrase", [
    (lambda r: r["results"][0].pop("variant"), "'results[0].variant' is missing"),
    (lambda r: r.update(results={"a": 1}), "'results' must be array"),
    (lambda r: r["results"][0]["latency"].update(p50_ms="fast"), "'results[0].latency.p50_ms' must be number"),
    (lambda r: r["results"][0].update(throughput_per_s=float("nan")), "finite"),
    (lambda r: r.update(schema_version=99), "schema versions"),
    (lambda r: r.clear(), "schema versions"),
])
def test_malformed_reports_are_refused_with_the_field_named(cli, tmp_path, edit, phrase):
    bad = _report(10, 100, 0.99)
    edit(bad)
    result = cli("bench", "compare", *_write(tmp_path, _report(10, 100, 0.99), bad))
    assert result.exit_code == InvalidOptionError.exit_code, result.output
    assert phrase in result.output and "Traceback" not in result.output


def test_a_folder_or_a_missing_file_as_a_report(cli, tmp_path):
    (tmp_path / "old.json").write_text(json.dumps(_report(10, 100, 0.99)))
    result = cli("bench", "compare", tmp_path / "old.json", tmp_path)
    assert result.exit_code == InvalidOptionError.exit_code and "is a folder" in result.output
    result = cli("bench", "compare", tmp_path / "old.json", tmp_path / "none.json")
    assert result.exit_code == InvalidOptionError.exit_code and "does not exist" in result.output


def test_every_mutation_of_a_valid_report_gets_a_clean_answer(cli, tmp_path):
    """Each field of a valid report, changed in type, removed, made non-finite, or joined by an
    unknown key: compare answers with an exit code and a message, never a traceback."""
    valid = _report(10, 100, 0.99)
    (tmp_path / "old.json").write_text(json.dumps(valid))
    count = 0
    for label, mutated in mutations(valid):
        (tmp_path / "new.json").write_text(json.dumps(mutated, allow_nan=True))
        result = cli("bench", "compare", tmp_path / "old.json", tmp_path / "new.json")
        assert "Traceback" not in result.output, label
        assert result.exit_code in (0, InvalidOptionError.exit_code, RegressionError.exit_code), (label, result.output)
        count += 1
    assert count > 60
    assert copy.deepcopy(valid) == _report(10, 100, 0.99)          # the generator never touched the original


def _with_rounds(report: dict, rounds: list[float]) -> dict:
    report = copy.deepcopy(report)
    for row in report["results"]:
        row["rounds_ms"] = rounds
    return report


@pytest.mark.parametrize("rounds, code, verdict", [
    ([10.8, 9.1, 12.4, 10.9, 8.6], 0, "within the noise"),     # +8% at the median, but the rounds scatter
    ([14.2, 13.8, 15.1, 14.6, 13.9], 16, "REGRESSION"),         # +42%: past 5% even at the interval's low end
], ids=["noisy-inside-the-noise", "noisy-but-real"])
def test_the_regression_gate_uses_the_interval(cli, tmp_path, rounds, code, verdict):
    old = _with_rounds(_report(10.0, 100.0, 0.995), [10.2, 9.4, 11.6, 10.0, 9.0])
    new = _with_rounds(_report(float(np.median(rounds)), 100.0 * 10.0 / float(np.median(rounds)), 0.995), rounds)
    result = cli("bench", "compare", *_write(tmp_path, old, new), "--max-regression", "5%")
    assert result.exit_code == code, result.output
    assert verdict in result.output and "95% interval" in result.output


def test_a_throughput_collapse_is_a_regression_with_an_interval_below_100_percent(cli, tmp_path):
    old = _with_rounds(_report(10.0, 100.0, 0.995), [10.2, 9.4, 11.6, 10.0, 9.0])
    new = _with_rounds(_report(100.0, 10.0, 0.995), [102.0, 94.0, 116.0, 100.0, 90.0])       # 10x slower
    result = cli("bench", "compare", *_write(tmp_path, old, new))
    assert result.exit_code == RegressionError.exit_code, result.output
    row = next(line for line in result.output.splitlines() if "throughput_per_s" in line)
    low, high = (float(x) for x in row.split()[-2].rstrip("%").split(".."))
    assert "REGRESSION" in row and 80 < low <= high < 100, row



@pytest.mark.parametrize("edit, phrase", [
    (lambda parity: parity["int8"].update(accuracy={"samples": 100, "top1": 0.10}), "int8 parity labels accuracy"),
    (lambda parity: parity["int8"]["domains"]["legal"].update(min_cosine=0.50),
     "int8 parity domain legal min_cosine"),
    (lambda parity: parity["int8"].update(passed=False), "parity missed its thresholds for int8"),
    (lambda parity: parity.clear(), "int8 parity"),                                  # the parity vanished
], ids=["accuracy-drop", "domain-drop", "parity-failed", "parity-vanished"])
def test_every_faithfulness_figure_is_gated(cli, tmp_path, edit, phrase):
    old, new = _report(10, 100, 0.995), _report(10, 100, 0.995)
    legal = {"samples": 9, "mean_cosine": 0.995, "p01_cosine": 0.99, "min_cosine": 0.99}
    old["parity"]["int8"].update(accuracy={"samples": 100, "top1": 0.95}, domains={"legal": legal})
    new["parity"]["int8"].update(copy.deepcopy({k: old["parity"]["int8"][k] for k in ("accuracy", "domains")}))
    assert cli("bench", "compare", *_write(tmp_path, old, new)).exit_code == 0
    edit(new["parity"])
    assert_fails(cli("bench", "compare", *_write(tmp_path, old, new)), RegressionError.exit_code, phrase)
