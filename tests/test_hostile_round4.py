"""The fourth hostile pass: ship, verify, package and inspect as a deployment engineer misuses
them.  (Recipe checks, the ship cache and --force on bundles and folders are tested beside
their code: tests/pipeline/test_ship.py, tests/package/.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from edgeport.errors import ArtifactError, InvalidOptionError, StoppedByUser
from helpers import assert_fails


def test_a_threshold_the_task_never_measures_is_refused(cli, onnx_artifacts, tmp_path):
    encoder = onnx_artifacts["encoder"].path
    for command in (("verify", encoder, "--reference", encoder),
                    ("bench", "run", encoder, "--rounds", "1", "--json", tmp_path / "b.json"),
                    ("quantize", encoder, "--mode", "int8-dynamic", "-o", tmp_path / "q")):
        assert_fails(cli(*command, "--min-top1-agreement", "0.99"), InvalidOptionError.exit_code,
                     "--min-top1-agreement", "predicts none")
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "q").exists()


def test_inspect_checks_key_and_digest_together_and_takes_a_bundles_digest(cli, onnx_artifacts, tmp_path):
    from edgeport.package.bundle import package_bundle

    artifact = onnx_artifacts["encoder"]
    digest = artifact.manifest_sha256
    assert_fails(cli("inspect", artifact.path, "--trusted-key", tmp_path / "missing.pem",
                     "--expect-manifest-sha256", digest), InvalidOptionError.exit_code, "--trusted-key")
    bundle = package_bundle(artifact.path, tmp_path / "enc.tar.gz")
    assert cli("inspect", bundle, "--expect-manifest-sha256", digest).exit_code == 0
    other = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    assert_fails(cli("inspect", bundle, "--expect-manifest-sha256", other), ArtifactError.exit_code, other)


@pytest.mark.parametrize("args, phrase", [
    (("--format", "bundle", "--max-batch", "0", "--storage-uri", "ftp://x"),
     "--max-batch, --storage-uri are for --format kserve or triton, not bundle"),
    (("--format", "triton", "--cpu", "lots"), "--cpu is for --format kserve, not triton"),
    (("--format", "kserve", "--target", "ort-mobile"), "--target is for --format bundle, not kserve"),
])
def test_package_refuses_options_its_format_would_ignore(cli, onnx_artifacts, tmp_path, args, phrase):
    assert_fails(cli("package", onnx_artifacts["encoder"].path, *args, "-o", tmp_path / "out.tar.gz"),
                 InvalidOptionError.exit_code, phrase, absent=tmp_path / "out.tar.gz")


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv to drop the capability that lets root read anything")
def test_an_unreadable_model_file_is_one_error_line(onnx_artifacts, tmp_path):
    artifact = tmp_path / "art"
    shutil.copytree(onnx_artifacts["encoder"].path, artifact)
    (artifact / "model.onnx").chmod(0)
    edgeport = [sys.executable, "-m", "edgeport"]
    for args in (["inspect", artifact], ["verify", artifact, "--reference", onnx_artifacts["encoder"].path],
                 ["package", artifact, "--format", "bundle", "-o", tmp_path / "b.tar.gz"]):
        done = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *edgeport,
                               *map(str, args)], capture_output=True, text=True, timeout=120)
        assert done.returncode == ArtifactError.exit_code, done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"error: cannot read '{artifact / 'model.onnx'}': " \
                                                       "Permission denied", done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "b.tar.gz").exists()


@pytest.mark.slow
def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary_files(minilm_onnx, tmp_path):
    """timeout, CI runners and Kubernetes stop a job with SIGTERM: quantize's work folder (some
    hundred MB) and its staged output go, as they do on Ctrl-C."""
    temporary, out = tmp_path / "tmp", tmp_path / "int8"
    temporary.mkdir()

    def left():          # ONNX Runtime (1.32) keeps a session id in the temp folder, '.ses': not ours
        return [p for p in temporary.iterdir() if p.name != ".ses"]

    process = subprocess.Popen([sys.executable, "-m", "edgeport", "quantize", str(minilm_onnx.path), "--mode",
                                "int8-dynamic", "-o", str(out)], env={**os.environ, "TMPDIR": str(temporary)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not left() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "quantize ended before it made its work folder"
    time.sleep(1.0)                                     # well inside the work
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == StoppedByUser.exit_code, stderr
    assert "error: interrupted" in stderr and "Traceback" not in stderr
    assert left() == [] and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"]         # no staged sibling either


def test_a_tokenizer_from_a_larger_vocabulary_is_refused_before_torch_fails(cli, tiny_models, tmp_path):
    import transformers

    from edgeport.errors import SourceError

    source = tiny_models("bert", "feature-extraction")
    small = tmp_path / "small-vocab"
    shutil.copytree(source, small)
    config = transformers.AutoConfig.from_pretrained(small)
    config.vocab_size = 10                      # the tokenizer's ids run far past it
    transformers.AutoModel.from_config(config).save_pretrained(small)
    assert_fails(cli("export", "onnx", small, "-o", tmp_path / "out"), SourceError.exit_code, "vocab_size is 10",
                 "another checkpoint", absent=tmp_path / "out")


def test_an_opset_the_exporter_raised_is_noted(cli, tiny_models, tmp_path):
    result = cli("export", "onnx", tiny_models("bert", "feature-extraction"), "-o", tmp_path / "o", "--exporter",
                 "dynamo", "--opset", "13")
    assert result.exit_code == 0, result.output
    assert "onnx, opset 18" in result.output and "note: --opset 13 was asked; the dynamo exporter wrote opset 18" \
        in result.output


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_one_error_line_and_leaves_nothing(cli, onnx_artifacts, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a tmpfs")
    try:
        result = cli("package", onnx_artifacts["encoder"].path, "--format", "triton", "-o", small / "repo")
        assert_fails(result, 1, "no space left on the device")
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_bench_refuses_two_different_models_before_it_measures(cli, tiny_models, onnx_artifacts, tmp_path):
    from edgeport.errors import ParityError

    other = cli("export", "onnx", tiny_models("bert", "feature-extraction"), "-o", tmp_path / "tiny")
    assert other.exit_code == 0, other.output
    result = cli("bench", "run", onnx_artifacts["encoder"].path, tmp_path / "tiny", "--rounds", "1", "--no-memory",
                 "--json", tmp_path / "r.json")
    assert_fails(result, ParityError.exit_code, "not the same model", absent=tmp_path / "r.json")
    assert "single-stream" not in result.output                     # refused before any scenario ran


def test_the_torch_baseline_refuses_a_source_whose_weights_changed(cli, tiny_models, tmp_path, monkeypatch):
    import transformers

    source = tmp_path / "src"
    shutil.copytree(tiny_models("bert", "feature-extraction"), source)
    monkeypatch.chdir(tmp_path)                       # a relative source is recorded as an absolute path
    assert cli("export", "onnx", "src", "-o", tmp_path / "art").exit_code == 0
    from edgeport.artifact import Artifact

    assert Artifact.load(tmp_path / "art").manifest.export_parameters()["source"] == str(source.resolve())
    config = transformers.AutoConfig.from_pretrained(source)
    transformers.AutoModel.from_config(config).save_pretrained(source)          # retrained: other weights
    monkeypatch.chdir("/")
    assert_fails(cli("bench", "run", tmp_path / "art", "--baseline", "torch", "--rounds", "1", "--no-memory",
                     "--json", tmp_path / "r.json"), InvalidOptionError.exit_code, "no longer holds the weights",
                 absent=tmp_path / "r.json")


def test_bench_refuses_options_it_would_ignore_or_clamp(cli, onnx_artifacts, tmp_path):
    encoder = onnx_artifacts["encoder"]
    fast = ("--rounds", "1", "--no-memory", "--json", tmp_path / "r.json")
    assert_fails(cli("bench", "run", encoder.path, "--rate", "5", *fast), InvalidOptionError.exit_code,
                 "--rate set the server scenario", absent=tmp_path / "r.json")
    longest = encoder.manifest.processing["max_length"]
    assert_fails(cli("bench", "run", encoder.path, "--scenario", "sweep", "--sequence-lengths",
                     f"8,{longest + 1}", *fast), InvalidOptionError.exit_code, f"cuts text at {longest} tokens",
                 absent=tmp_path / "r.json")


def test_export_refuses_a_weight_without_an_adapter(cli, tiny_models, tmp_path):
    assert_fails(cli("export", "onnx", tiny_models("bert", "feature-extraction"), "-o", tmp_path / "o", "--weight",
                     "2"), InvalidOptionError.exit_code, "give --adapter too", absent=tmp_path / "o")


def test_weights_the_config_does_not_use_are_noted(cli, tiny_models, tmp_path):
    import json

    source = tmp_path / "src"
    shutil.copytree(tiny_models("bert", "feature-extraction"), source)
    config = json.loads((source / "config.json").read_text())
    config["num_hidden_layers"] -= 1                        # the weights hold one layer more
    (source / "config.json").write_text(json.dumps(config))
    result = cli("export", "onnx", source, "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "tensors this BertModel does not use" in result.output


def test_bench_force_keeps_files_that_only_mention_a_report(cli, onnx_artifacts, tmp_path):
    from edgeport.errors import OutputExistsError

    notes, data = tmp_path / "notes.html", tmp_path / "data.json"
    notes.write_text("<h1>My notes on the edgeport bench report format</h1>\nimportant\n")
    data.write_text('{"schema_version": 1, "variants": [], "results": [], "mine": true}')
    fast = ("--rounds", "1", "--no-memory", "--force")
    for option, path in (("--html", notes), ("--json", data)):
        before = path.read_text()
        assert_fails(cli("bench", "run", onnx_artifacts["encoder"].path, option, path, *fast),
                     OutputExistsError.exit_code, "is not an edgeport")
        assert path.read_text() == before
    report = tmp_path / "r.json"                      # edgeport's own reports are still replaced
    page = tmp_path / "r.html"
    for _ in range(2):
        assert cli("bench", "run", onnx_artifacts["encoder"].path, "--json", report, "--html", page, *fast,
                   "--min-duration", "0.01").exit_code == 0


def test_bench_force_keeps_a_report_the_user_annotated(cli, onnx_artifacts, tmp_path):
    """Each report carries the sha256 of its own text: one edited since is the user's now."""
    from edgeport.errors import OutputExistsError

    report, page = tmp_path / "r.json", tmp_path / "r.html"
    fast = ("--rounds", "1", "--no-memory", "--force", "--min-duration", "0.01")
    assert cli("bench", "run", onnx_artifacts["encoder"].path, "--json", report, "--html", page, *fast).exit_code == 0
    for path, edit in ((report, lambda t: t.replace('"interrupted": false', '"interrupted": false, "note": "x"')),
                       (page, lambda t: t.replace("<h1>", "<p>reviewed by Ana: keep</p><h1>"))):
        annotated = edit(path.read_text())
        assert annotated != path.read_text()
        path.write_text(annotated)
        assert_fails(cli("bench", "run", onnx_artifacts["encoder"].path, "--json" if path == report else "--html",
                         path, *fast), OutputExistsError.exit_code, "was edited since edgeport wrote it")
        assert path.read_text() == annotated
