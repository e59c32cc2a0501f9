"""The eleventh pass: a new user's bench, package, serve, verify and run, mended."""

from __future__ import annotations

import json

import pytest
from helpers import assert_fails

from edgeport.errors import InvalidOptionError, ModelInputError


def _state(other: float, seconds: float = 1.0) -> dict:
    return {"seconds": seconds, "other_cpu_share": other, "steal_share": 0.0, "load_per_cpu": None, "mhz": None,
            "disturbed": other > 0.25}


def test_the_share_said_to_be_during_the_rounds_is_the_rounds_own():
    """The warning printed the larger of the rounds' share and the idle samples' (52% 'during
    these rounds' beside a measured 33%); the idle one is now named apart."""
    from edgeport.bench.report import BenchReport

    report = BenchReport(created="now", machine={}, results=[], parity={}, reference="a", variants=[{"name": "a"}],
                         machine_rounds=[_state(0.33), _state(0.33)],
                         machine_quiet={"before": _state(0.52), "after": _state(0.1)})
    report.judge_machine()
    assert report.machine_state["other_cpu_share"] == pytest.approx(0.33)
    assert "used 33% of the CPUs during these rounds and 52% just before or after them" in report.warnings[0]
    quiet_idle = BenchReport(created="now", machine={}, results=[], parity={}, reference="a", variants=[{"name": "a"}],
                             machine_rounds=[_state(0.4)], machine_quiet={"before": _state(0.1)})
    quiet_idle.judge_machine()
    assert "used 40% of the CPUs during these rounds (1 of 1" in quiet_idle.warnings[0]


def test_run_refuses_a_blank_line_that_would_shift_its_outputs(cli, onnx_artifacts, tmp_path):
    encoder = onnx_artifacts["encoder"].path
    (tmp_path / "gap.txt").write_text("first line\n\nsecond line\n")
    assert_fails(cli("run", encoder, "--input", tmp_path / "gap.txt"), ModelInputError.exit_code,
                 "line 2 is blank", "shift every output after it")
    (tmp_path / "gap.jsonl").write_text('{"text": "a"}\n\n\n{"text": "b"}\n')
    assert_fails(cli("run", encoder, "--input", tmp_path / "gap.jsonl"), ModelInputError.exit_code,
                 "lines 2, 3 are blank")
    (tmp_path / "end.txt").write_text("first line\nsecond line\n\n\n")       # blank lines at the end only
    result = cli("run", encoder, "--input", tmp_path / "end.txt")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["predictions"]) == 2
    # Calibration and evaluation data still skip them: no output follows their lines.
    from edgeport.data import read_examples

    assert read_examples(tmp_path / "gap.txt") == ("text", ["first line", "second line"])


def test_text_under_another_field_name_says_to_call_it_text(cli, onnx_artifacts, tmp_path):
    (tmp_path / "t.jsonl").write_text('{"foo": "a sentence"}\n')
    assert_fails(cli("run", onnx_artifacts["encoder"].path, "--input", tmp_path / "t.jsonl"), ModelInputError.exit_code,
                 "'foo' holds text; name the field \"text\"")


def test_compare_notes_reports_measured_against_different_references():
    from edgeport.bench.compare import footing_notes

    old, new = {"reference": "work/mini"}, {"reference": "mini8"}
    assert any("different references ('mini' / 'mini8')" in note for note in footing_notes(old, new))
    assert not footing_notes({"reference": "/abs/work/mini"}, {"reference": "mini"})     # one folder, two paths


def test_a_kserve_replica_with_no_cpu_or_memory_is_refused(cli, onnx_artifacts, tmp_path):
    out = tmp_path / "ks"
    for option, value in (("--cpu", "0"), ("--memory", "0Gi"), ("--cpu", "0.0")):
        assert_fails(cli("package", onnx_artifacts["classifier"].path, "--format", "kserve", "-o", out, option,
                         value), InvalidOptionError.exit_code, f"{option} '{value}' is zero", absent=out)


def test_a_triton_name_taken_from_the_folder_points_to_name(cli, onnx_artifacts, tmp_path):
    import shutil

    spaced = shutil.copytree(onnx_artifacts["classifier"].path, tmp_path / "ü dir" / "模型 int8")
    out = tmp_path / "repo"
    assert_fails(cli("package", spaced, "--format", "triton", "-o", out), InvalidOptionError.exit_code,
                 "'模型 int8' (the artifact folder's name)", "give one with --name", absent=out)
    assert cli("package", spaced, "--format", "triton", "-o", out, "--name", "model_int8").exit_code == 0


def test_signing_with_an_rsa_key_says_what_key_it_takes(cli, onnx_artifacts, tmp_path):
    pytest.importorskip("model_signing", reason="the signing extra: pip install 'edgeport[signing]'")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    bundle = tmp_path / "b.tar.gz"
    result = cli("package", onnx_artifacts["classifier"].path, "--format", "bundle", "-o", bundle, "--sign",
                 tmp_path / "rsa.pem")
    assert_fails(result, InvalidOptionError.exit_code, "another kind of key", "openssl ecparam", absent=bundle)
    assert "object has no attribute" not in result.output
