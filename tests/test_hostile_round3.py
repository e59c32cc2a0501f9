"""The third hostile pass (issue 23): the commands added in the second round under hostile
input.  One row per case; every row checks the exit code, the message, and what is on disk
(or, for the server, the status and that it keeps serving)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeport.errors import (ArtifactError, InvalidOptionError, OutputExistsError, SourceError, StoppedByUser,
                             UnsafeFileError)
from helpers import assert_fails, edit_manifest, folder_names, rewrite_bundle, tar_member
from serving import free_port, request, running


def _bundle(artifact, path: Path) -> Path:
    from edgeport.package.bundle import package_bundle

    return package_bundle(artifact.path, path)


def _recipe(tmp_path: Path, **data) -> Path:
    recipe = {"name": "r", "output": str(tmp_path / "ship-out"), "source": {"model": "bundled:all-MiniLM-L6-v2"},
              "variants": [{"name": "fp32", "precision": "fp32"}]}
    recipe.update(data)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


# ------------------------------------------------------------------------ 1, 11, 19, 20: recipes refused when read

def _report(path: Path) -> str:
    path.write_text("{}")
    return str(path)


@pytest.mark.parametrize("edit, phrases", [
    (lambda t: {"variants": [{"name": "v", "precision": "int8-dynamic", "gates": {"min_top1_agreement": 0.99}}]},
     ["min_top1_agreement", "never measures"]),
    (lambda t: {"variants": [{"name": "v", "precision": "fp32", "gates": {"max_token_disagreement": 0.1}}]},
     ["max_token_disagreement", "never measures"]),
    (lambda t: {"gates": {"max_perplexity_increase": 0.1}}, ["max_perplexity_increase", "never measures"]),
    (lambda t: {"source": {"model": "bundled:gpt-17"}}, ["bundled:gpt-17", "not a bundled model"]),
    (lambda t: {"source": {"model": str(t / "missing-model")}}, ["missing-model", "does not exist"]),
    (lambda t: {"name": "../../x"}, ["'name'", "letters, digits"]),
    (lambda t: {"name": "/tmp/elsewhere"}, ["'name'", "letters, digits"]),
    (lambda t: {"gates": {"previous_report": str(t / "gone.json")}}, ["previous_report", "does not exist"]),
    (lambda t: {"gates": {"previous_report": _report(t / "empty.json")}}, ["previous_report", "not an edgeport"]),
    (lambda t: {"gates": {"max_regression": "abc"}}, ["max_regression", "not a percentage"]),
    (lambda t: {"verify": {"platforms": ["linux/arm64"]}, "package": {"formats": ["triton"]}},
     ["verify.platforms", "'bundle'"]),
    (lambda t: {"variants": [{"name": "q", "precision": "int4"}]}, ["int4", "for causal LMs"]),
], ids=["top1-on-embeddings", "tokens-on-embeddings", "perplexity-shared", "unknown-bundled", "missing-source",
        "name-climbs", "name-absolute", "previous-report-missing", "previous-report-not-a-report",
        "max-regression-abc", "platforms-without-bundle", "int4-on-an-encoder"])
def test_recipes_that_could_only_fail_late_are_refused_when_read(cli, tmp_path, edit, phrases):
    recipe = _recipe(tmp_path, **edit(tmp_path))
    for args in (("ship", recipe, "--dry-run"), ("ship", recipe)):
        assert_fails(cli(*args), InvalidOptionError.exit_code, *phrases, absent=tmp_path / "ship-out")
    assert not (tmp_path / "x").exists() and not Path("/tmp/elsewhere").exists()


def test_a_stopped_ship_says_which_finished_steps_it_kept(tmp_path, tiny_models):
    from edgeport.pipeline import load_recipe, ship

    recipe = load_recipe(_recipe(tmp_path, source={"model": str(tiny_models("bert", "feature-extraction"))},
                                 variants=[{"name": "fp32", "precision": "fp32"},
                                           {"name": "int8", "precision": "int8-dynamic"}]))

    def stop_at_quantize(message: str) -> None:
        if message.startswith("[run] quantize"):
            raise KeyboardInterrupt

    with pytest.raises(StoppedByUser, match="finished steps are kept .*\\(export\\)"):
        ship(recipe, progress=stop_at_quantize)
    assert (tmp_path / "ship-out" / "export" / "edgeport.json").is_file()
    assert not (tmp_path / "ship-out" / "int8").exists()


# ------------------------------------------------------------------------ 2, 5, 10, 12: bundles

@pytest.mark.parametrize("name", [".tar.gz", ".tgz", "..tar.gz"])
def test_a_bundle_needs_a_name(cli, onnx_artifacts, tmp_path, name):
    assert_fails(cli("package", onnx_artifacts["classifier"].path, "--format", "bundle", "-o", tmp_path / name),
                 InvalidOptionError.exit_code, "plain file name", absent=tmp_path / name)
    assert folder_names(tmp_path) == set()


def test_no_bundle_member_is_absolute_or_empty(onnx_artifacts, tmp_path):
    with tarfile.open(_bundle(onnx_artifacts["classifier"], tmp_path / "clf.tar.gz")) as archive:
        names = archive.getnames()
    assert all(n and not n.startswith("/") and n.split("/")[0] == "clf" for n in names), names


@pytest.mark.parametrize("edit, error, phrase", [
    (lambda m: m.append(tar_member("clf/artifact/huge.bin", b"\0" * (64 << 20))), ArtifactError, "does not list"),
    (lambda m: _grow(m, "clf/artifact/model.onnx"), ArtifactError, "declares"),
    (lambda m: m.append(tar_member(".", b"x")), UnsafeFileError, "empty name"),
    (lambda m: m.insert(0, tar_member("./", b"")), UnsafeFileError, "empty name"),
], ids=["unlisted-member", "member-larger-than-declared", "member-named-dot", "member-named-dot-slash"])
def test_bundle_members_are_checked_before_anything_is_written(cli, onnx_artifacts, tmp_path, monkeypatch, edit,
                                                               error, phrase):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bad = rewrite_bundle(_bundle(onnx_artifacts["classifier"], tmp_path / "clf.tar.gz"), tmp_path / "bad.tar.gz",
                          edit)
    np.savez(tmp_path / "f.npz", features=np.zeros((1, 8), np.float32))
    for args in (("inspect", bad), ("run", bad, "--input", tmp_path / "f.npz"),
                 ("verify", bad, "--platform", "linux/arm64")):
        assert_fails(cli(*args), error.exit_code, phrase)
    written = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert written == []                                # not one byte of the bundle reached the cache


def _grow(members, name: str) -> None:
    """``name`` (a checksummed artifact file) with bytes added: listed, but larger than the
    manifest declares."""
    index = next(i for i, (info, _) in enumerate(members) if info.name == name)
    info, payload = members[index]
    payload = payload + b"\0" * 4096
    info.size = len(payload)
    members[index] = (info, payload)


def test_a_cache_folder_that_is_a_file_is_a_clear_error(cli, onnx_artifacts, tmp_path, monkeypatch):
    bundle = _bundle(onnx_artifacts["classifier"], tmp_path / "clf.tar.gz")
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    np.savez(tmp_path / "f.npz", features=np.zeros((1, 8), np.float32))
    assert_fails(cli("run", bundle, "--input", tmp_path / "f.npz"), InvalidOptionError.exit_code, "XDG_CACHE_HOME")


OPEN_AFTER_START = r"""
import sys, time, pathlib
from edgeport.runtime.bundle import open_bundle
start = pathlib.Path(sys.argv[2])
while not start.exists():
    time.sleep(0.005)
print(open_bundle(sys.argv[1]).manifest_sha256)
"""


def test_six_processes_opening_one_new_bundle_at_once_all_succeed(onnx_artifacts, tmp_path):
    bundle = _bundle(onnx_artifacts["encoder"], tmp_path / "enc.tar.gz")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cold-cache")}
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_AFTER_START, str(bundle), str(go)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    time.sleep(1.5)                                     # every process imported and waits
    go.write_text("")
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, [err for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    extracted = [p for p in (tmp_path / "cold-cache" / "edgeport" / "bundles").iterdir()]
    assert len(extracted) == 1 and not extracted[0].name.startswith(".")    # one folder, no staging left


def test_a_damaged_cache_is_replaced_from_the_bundle_not_deleted_under_readers(onnx_artifacts, tmp_path, monkeypatch):
    from edgeport.runtime.bundle import open_bundle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = _bundle(onnx_artifacts["classifier"], tmp_path / "clf.tar.gz")
    first = open_bundle(bundle)
    (first.path / "golden.npz").write_bytes(b"damaged")
    again = open_bundle(bundle)                         # re-extracted from the bundle, which is the truth
    assert again.path == first.path and again.golden() is not None


# ------------------------------------------------------------------------ 3: hand edits of a folder's manifest

@pytest.mark.parametrize("key, value", [("pooling", "cls"), ("normalize", False), ("max_length", 8)])
def test_hand_edits_of_a_folder_manifest_are_caught_and_named(cli, onnx_artifacts, tmp_path, key, value):
    art = tmp_path / "art"
    shutil.copytree(onnx_artifacts["encoder"].path, art)
    edit_manifest(art, lambda data: data["processing"].update({key: value}), reseal=False)
    for args in (("inspect", art), ("run", art, "--text", "hello"), ("inspect", art, "--no-checksums")):
        assert_fails(cli(*args), ArtifactError.exit_code, "was edited", f"'processing.{key}' changed")


def test_a_removed_seal_is_caught(cli, onnx_artifacts, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(onnx_artifacts["encoder"].path, art)
    edit_manifest(art, lambda data: data.pop("seal"), reseal=False)
    assert_fails(cli("run", art, "--text", "hello"), ArtifactError.exit_code, "seal was removed")


# ------------------------------------------------------------------------ 6, 14, 15, 21: serve options

@pytest.mark.parametrize("args, env, phrase", [
    ((), {"EDGEPORT_AUTH_TOKEN": ""}, "EDGEPORT_AUTH_TOKEN is set but empty"),
    ((), {"EDGEPORT_AUTH_TOKEN": "   "}, "EDGEPORT_AUTH_TOKEN is set but empty"),
    (("--auth-token-file", "{empty}"), {}, "is empty"),
    (("--auth-token-file", "{missing}"), {}, "cannot be read"),
    (("--auth-token", "t", "--auth-token-file", "{empty}"), {}, "not both"),
    (("--threads", "100000"), {}, "more than this machine can use"),
    (("--max-delay-ms", "1e300", "--max-batch", "4"), {}, "--max-delay-ms must be between 0 and"),
    (("--max-delay-ms", "nan"), {}, "--max-delay-ms must be between 0 and"),
    (("--name", "a/b"), {}, "--name 'a/b' must be letters"),
], ids=["empty-env-token", "blank-env-token", "empty-token-file", "missing-token-file", "token-twice",
        "threads-100000", "delay-1e300", "delay-nan", "name-with-slash"])
def test_serve_refuses_bad_settings_before_it_listens(cli, onnx_artifacts, tmp_path, monkeypatch, args, env, phrase):
    (tmp_path / "empty").write_text("\n")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for a in args]
    start = time.perf_counter()
    assert_fails(cli("serve", onnx_artifacts["encoder"].path, "--port", str(free_port()), *args),
                 InvalidOptionError.exit_code, phrase)
    assert time.perf_counter() - start < 30


def test_a_token_file_protects_the_server_and_a_command_line_token_is_warned_about(onnx_artifacts, tmp_path):
    from edgeport.serve import ServeOptions, startup_warnings

    (tmp_path / "token").write_text("s3cret\n")
    with running(onnx_artifacts["encoder"].path, "--name", "enc", "--auth-token-file", str(tmp_path / "token")) \
            as (base, _):
        assert request(f"{base}/v2/models/enc")[0] == 401
        assert request(f"{base}/v2/models/enc", headers={"Authorization": "Bearer s3cret"})[0] == 200
    warning = startup_warnings(ServeOptions(auth_token="t"), "t")
    assert len(warning) == 1 and "visible to every local user" in warning[0]


def test_serve_exits_130_on_ctrl_c_after_answering(onnx_artifacts):
    with running(onnx_artifacts["encoder"].path, "--name", "enc") as (base, process):
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert "stopped by Ctrl-C" in process.stderr.read()


# ------------------------------------------------------------------------ 8, 9, 21: requests

DEEP = b"[" * 200_000


@pytest.mark.parametrize("route, body, phrase", [
    ("text", DEEP, "nested too deeply"),
    ("infer", DEEP, "nested too deeply"),
    ("infer", {"inputs": [{"name": "input_ids", "shape": [2 ** 62, 2 ** 62], "datatype": "INT64", "data": [1]}]},
     "more than a JSON request carries"),
    ("infer", {"inputs": [{"name": "input_ids", "shape": [2 ** 62, 4], "datatype": "INT64", "data": [1],
                           "parameters": {"binary_data_size": 8}}]}, "binary_data_size does not match"),
    ("infer", {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [5, 6]},
                          {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
                          {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [7, 8]}]},
     "given twice"),
], ids=["deep-json-text", "deep-json-infer", "shape-overflows-int64", "binary-shape-overflows", "input-twice"])
def test_hostile_requests_get_400_and_the_server_keeps_serving(onnx_artifacts, route, body, phrase):
    with running(onnx_artifacts["encoder"].path, "--name", "enc") as (base, _):
        status, payload, _ = request(f"{base}/v2/models/enc/{route}", body, {"content-type": "application/json"})
        assert status == 400 and phrase in payload["error"], payload
        assert request(f"{base}/v2/health/ready")[0] == 200


# ------------------------------------------------------------------------ 7, 13, 16: export

def test_the_timing_cache_never_replaces_an_input_or_a_file_it_did_not_write(cli, minilm_onnx, tmp_path):
    model = minilm_onnx.path / "model.onnx"
    before = model.read_bytes()[:64]
    assert_fails(cli("export", "tensorrt", minilm_onnx.path, "-o", tmp_path / "e", "--timing-cache", model),
                 InvalidOptionError.exit_code, "--timing-cache", "the input", absent=tmp_path / "e")
    (tmp_path / "notes.txt").write_text("mine")
    assert_fails(cli("export", "tensorrt", minilm_onnx.path, "-o", tmp_path / "e", "--timing-cache",
                     tmp_path / "notes.txt"), OutputExistsError.exit_code, "notes.txt", absent=tmp_path / "e")
    assert_fails(cli("export", "tensorrt", minilm_onnx.path, "-o", tmp_path / "e", "--timing-cache",
                     tmp_path / "notes.txt", "--force"), OutputExistsError.exit_code,
                 "TensorRT timing cache written by edgeport")
    assert model.read_bytes()[:64] == before and (tmp_path / "notes.txt").read_text() == "mine"


def test_builder_precision_on_a_model_that_is_not_a_causal_lm_is_refused(cli, tmp_path, tiny_models):
    for precision in ("int4", "fp16"):
        assert_fails(cli("export", "onnx", tiny_models("bert", "feature-extraction"), "-o", tmp_path / "out",
                         "--precision", precision), InvalidOptionError.exit_code, f"--precision {precision}",
                     "edgeport quantize", absent=tmp_path / "out")


def test_a_causal_lm_config_with_a_field_of_the_wrong_type(cli, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from llm_models import build_lm

    source = build_lm(tmp_path / "lm", steps=0)
    config = json.loads((source / "config.json").read_text())
    config["hidden_size"] = "big"
    (source / "config.json").write_text(json.dumps(config))
    assert_fails(cli("export", "onnx", source, "-o", tmp_path / "out"), SourceError.exit_code, "hidden_size",
                 absent=tmp_path / "out")


# ------------------------------------------------------------------------ 21: bench

def test_bench_domains_that_name_nothing(cli, onnx_artifacts):
    assert_fails(cli("bench", onnx_artifacts["encoder"].path, "--domains", ",,,"), InvalidOptionError.exit_code,
                 "names no domain")


# ------------------------------------------------------------------------ 17, 18: causal LMs (a real tiny LM)

@pytest.mark.slow
def test_causal_lm_requests_and_zero_new_tokens(cli, lms):
    pytest.importorskip("onnxruntime_genai")
    from edgeport.runtime import load

    artifact = lms("llama")["onnx"]
    assert_fails(cli("run", artifact.path, "--prompt", "Return the", "--max-new-tokens", "0"),
                 InvalidOptionError.exit_code, "Invalid value for '--max-new-tokens': 0 is not in the range x>=1")
    with load(artifact.path) as model, pytest.raises(InvalidOptionError, match="max_new_tokens"):
        model.generate("Return the", max_new_tokens=0)
    with running(artifact.path, "--name", "tiny") as (base, _):
        for route, body, phrase in [
            ("/v1/chat/completions", {"messages": [1, 2]}, "'messages' must be a non-empty list of"),
            ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "'messages' must be a non-empty list of"),
            ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "'max_tokens' must be a whole number >= 1"),
            ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "OpenAI's roles are"),
            ("/v1/completions", DEEP, "nested too deeply"),
            ("/v1/chat/completions", DEEP, "nested too deeply"),
        ]:
            status, payload, _ = request(f"{base}{route}", body, {"content-type": "application/json"})
            assert status == 400 and phrase in payload["error"]["message"], (route, payload)
        assert request(f"{base}/v1/models")[0] == 200
