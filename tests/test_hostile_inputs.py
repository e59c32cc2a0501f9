"""The hostile-input pass: what a careless or hostile user gives edgeport, one row per case.
Every row asserts the exit code, the message, and what is on disk afterwards."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgeport.artifact import Artifact
from edgeport.errors import (AdapterError, ArtifactError, CalibrationDataError, InvalidOptionError, ModelInputError,
                             SourceError, UnsafeFileError, UnsupportedModelError)
from edgeport.export.onnx import ExportOptions, export_onnx
from helpers import TESTS_DIR, assert_fails, edit_manifest, folder_names


def _copy(artifact: Artifact, to: Path) -> Path:
    shutil.copytree(artifact.path, to)
    return to


def _edit_manifest(folder: Path, edit) -> None:
    edit_manifest(folder, edit)


# ------------------------------------------------------------------------ 1. --force and overlapping outputs


def test_output_inside_or_around_the_source_is_refused(cli, tmp_path, tiny_models):
    parent = tmp_path / "p"
    shutil.copytree(tiny_models("distilbert", "feature-extraction"), parent / "model")
    (parent / "sibling.txt").write_text("keep")
    before = folder_names(parent / "model")
    assert_fails(cli("export", "onnx", parent / "model", "-o", parent, "--force"), InvalidOptionError.exit_code,
                 "contains the input")
    assert_fails(cli("export", "onnx", parent / "model", "-o", parent / "model", "--force"),
                 InvalidOptionError.exit_code, "is the input")
    assert_fails(cli("export", "onnx", parent / "model", "-o", parent / "model" / "out"),
                 InvalidOptionError.exit_code, "lies inside the input")
    assert folder_names(parent / "model") == before and (parent / "sibling.txt").read_text() == "keep"


def test_quantize_onto_its_own_input_is_refused(cli, onnx_artifacts, tmp_path):
    art = _copy(onnx_artifacts["classifier"], tmp_path / "art")
    manifest = (art / "edgeport.json").read_bytes()
    assert_fails(cli("quantize", art, "-o", art, "--mode", "int8-dynamic", "--force"), InvalidOptionError.exit_code,
                 "is the input")
    assert (art / "edgeport.json").read_bytes() == manifest


def test_force_onto_a_link_replaces_the_link_and_leaves_no_backup(onnx_artifacts, tmp_path):
    from edgeport.quantize import QuantizeOptions, quantize

    first = quantize(onnx_artifacts["classifier"].path, tmp_path / "first", QuantizeOptions(mode="int8-dynamic"))
    (tmp_path / "link").symlink_to(first.path)
    quantize(onnx_artifacts["classifier"].path, tmp_path / "link", QuantizeOptions(mode="fp16", force=True))
    assert not (tmp_path / "link").is_symlink() and Artifact.load(tmp_path / "link").manifest.precision["mode"] == "fp16"
    assert Artifact.load(first.path).manifest.precision["mode"] == "int8-dynamic"     # the link's target untouched
    assert folder_names(tmp_path) == {"first", "link"}                                 # no .link.old-PID left


# ------------------------------------------------------------------------ 2. permissions


def test_artifacts_get_the_permissions_the_umask_gives(onnx_artifacts, tmp_path):
    from edgeport.quantize import QuantizeOptions, quantize

    old = os.umask(0o022)
    try:
        out = quantize(onnx_artifacts["classifier"].path, tmp_path / "q", QuantizeOptions(mode="fp16")).path
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


# ------------------------------------------------------------------------ 3. the manifest cannot open a way out


@pytest.mark.parametrize("tokenizer", ["/etc/hostname", "../outside.json", "extra.json"])
def test_processing_files_must_be_checksummed_members(cli, onnx_artifacts, tmp_path, tokenizer):
    art = _copy(onnx_artifacts["encoder"], tmp_path / "art")
    (tmp_path / "outside.json").write_text("{}")
    (art / "extra.json").write_text("{}")
    _edit_manifest(art, lambda d: d["processing"].update(tokenizer=tokenizer))
    for args in (("inspect", art), ("run", art, "--text", "hello")):
        assert_fails(cli(*args), ArtifactError.exit_code, "not listed under 'files'")


def test_manifest_edits_are_caught_by_its_digest(cli, onnx_artifacts, tmp_path):
    art = _copy(onnx_artifacts["encoder"], tmp_path / "art")
    digest = json.loads(cli("inspect", art, "--json").output)["manifest_sha256"]
    assert cli("inspect", art, "--expect-manifest-sha256", digest).exit_code == 0
    _edit_manifest(art, lambda d: d["processing"].update(pooling="cls", normalize=False, max_length=8))
    assert_fails(cli("inspect", art, "--expect-manifest-sha256", digest), ArtifactError.exit_code, "was edited")


# ------------------------------------------------------------------------ 5. non-finite thresholds


@pytest.mark.parametrize("args", [
    ("verify", "{a}", "--reference", "{a}", "--max-abs-error", "nan"),
    ("verify", "{a}", "--reference", "{a}", "--min-cosine", "inf"),
    ("quantize", "{a}", "-o", "{out}", "--mode", "int8-dynamic", "--max-abs-error", "nan"),
    ("quantize", "{a}", "-o", "{out}", "--mode", "int8-dynamic", "--smooth-alpha", "nan"),
    ("bench", "{a}", "--min-top1-agreement", "nan"),
])
def test_non_finite_thresholds_are_refused_up_front(cli, onnx_artifacts, tmp_path, args):
    values = {"a": onnx_artifacts["classifier"].path, "out": tmp_path / "out"}
    assert_fails(cli(*[str(a).format(**values) for a in args]), InvalidOptionError.exit_code, absent=tmp_path / "out")


def test_export_atol_nan_fails_before_any_route(cli, tmp_path, tiny_models):
    import time

    start = time.perf_counter()
    assert_fails(cli("export", "onnx", tiny_models("distilbert", "feature-extraction"), "-o", tmp_path / "o",
                     "--atol", "nan"), InvalidOptionError.exit_code, "--atol", absent=tmp_path / "o")
    assert time.perf_counter() - start < 5


# ------------------------------------------------------------------------ 8. inputs ONNX Runtime would choke on


@pytest.mark.parametrize("edit,phrase", [
    (lambda f: f.update(input_ids=np.full_like(f["input_ids"], 100_000)), "outside the model's range"),
    (lambda f: f.update(input_ids=np.ones((1, 65), np.int64), attention_mask=np.ones((1, 65), np.int64)),
     "supports at most 64"),
    (lambda f: f.update(attention_mask=np.full_like(f["attention_mask"], 7)), "outside the model's range"),
    (lambda f: f.update(attention_mask=f["attention_mask"][:, :-1]), "disagree on 'sequence'"),
    (lambda f: f.update(input_ids=[[1, 2], [3]]), "ragged"),
])
def test_feeds_are_checked_against_the_manifest(onnx_artifacts, edit, phrase):
    from edgeport.runtime import load

    model = load(onnx_artifacts["encoder"].path)
    feeds = model.text_processor.encode(["a sentence", "another one"])
    edit(feeds)
    with pytest.raises(ModelInputError, match=phrase):
        model.run(feeds)


def test_run_input_with_ids_past_the_vocabulary(cli, onnx_artifacts, tmp_path):
    ids = np.full((1, 4), 99_999, np.int64)
    np.savez(tmp_path / "feeds.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    assert_fails(cli("run", onnx_artifacts["encoder"].path, "--input", tmp_path / "feeds.npz"),
                 ModelInputError.exit_code, "outside the model's range")


def test_evaluation_data_that_does_not_fit(cli, onnx_artifacts, tmp_path):
    ids = np.full((2, 4), 99_999, np.int64)
    np.savez(tmp_path / "eval.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    assert_fails(cli("quantize", onnx_artifacts["encoder"].path, "-o", tmp_path / "q", "--mode", "int8-dynamic",
                     "--data", tmp_path / "eval.npz"), CalibrationDataError.exit_code, "eval.npz",
                 "'input_ids' holds 99999, outside the model's range",
                 absent=tmp_path / "q")


def test_verify_against_a_candidate_with_a_smaller_vocabulary(cli, onnx_artifacts, tmp_path):
    candidate = _copy(onnx_artifacts["encoder"], tmp_path / "small")
    _edit_manifest(candidate, lambda d: d["graph"]["inputs"][0].update(range=[0, 50]))
    assert_fails(cli("verify", candidate, "--reference", onnx_artifacts["encoder"].path), ModelInputError.exit_code,
                 "outside the model's range")


# ------------------------------------------------------------------------ 9. data readers


def _png_bomb(path: Path) -> None:
    """A valid PNG header claiming 100000 x 100000 pixels."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("make,phrase", [
    (lambda p: np.savez(p / "d.npz"), "holds no arrays"),
    (lambda p: np.savez(p / "d.npz", features=np.float32(3)), "single number"),
    (lambda p: (p / "d.jsonl").write_bytes(b'{"text": "caf\xe9"}\n'), "not UTF-8"),
    (lambda p: ((p / "imgs").mkdir(), (p / "imgs" / "a.png").write_text("not a png")), "not a readable image"),
    (lambda p: ((p / "imgs").mkdir(), _png_bomb(p / "imgs" / "bomb.png")), "decompression bomb"),
    (lambda p: (p / "d.npz").write_bytes(b"PK\x03\x04garbage"), "is not an .npz archive"),
])
def test_unreadable_data_files(cli, onnx_artifacts, tmp_path, make, phrase):
    make(tmp_path)
    data = next(p for p in tmp_path.iterdir())
    assert_fails(cli("verify", onnx_artifacts["classifier"].path, "--reference", onnx_artifacts["classifier"].path,
                     "--data", data), CalibrationDataError.exit_code, phrase)


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_verify_limit_must_be_positive(cli, onnx_artifacts, limit):
    a = onnx_artifacts["classifier"].path
    assert_fails(cli("verify", a, "--reference", a, "--limit", limit), InvalidOptionError.exit_code, "--limit")


# ------------------------------------------------------------------------ 10. output paths


def test_output_under_a_file_or_too_long_is_refused_before_work(cli, onnx_artifacts, tmp_path):
    (tmp_path / "afile").write_text("x")
    a = onnx_artifacts["classifier"].path
    assert_fails(cli("quantize", a, "-o", tmp_path / "afile" / "deeper" / "out", "--mode", "fp16"),
                 InvalidOptionError.exit_code, "is a file, not a folder")
    assert_fails(cli("quantize", a, "-o", tmp_path / ("x" * 300), "--mode", "fp16"), InvalidOptionError.exit_code,
                 "too long")
    assert folder_names(tmp_path) == {"afile"}


def test_missing_parents_are_made_and_removed_again_on_failure(onnx_artifacts, tmp_path):
    from edgeport.outputs import staged_output

    with pytest.raises(RuntimeError):
        with staged_output(tmp_path / "new" / "deeper" / "out", force=False) as folder:
            (folder / "half").write_text("x")
            raise RuntimeError("stage failed")
    assert folder_names(tmp_path) == set()


def test_read_only_location_is_refused_before_work(cli, onnx_artifacts, tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)]).returncode:
            pytest.skip("running as root without permission to mount a read-only file system")
    else:
        target.chmod(0o555)
    try:
        assert_fails(cli("quantize", onnx_artifacts["classifier"].path, "-o", target / "out", "--mode", "fp16"),
                     InvalidOptionError.exit_code, "read-only" if os.geteuid() == 0 else "permission denied")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(target)])
        else:
            target.chmod(0o755)


# ------------------------------------------------------------------------ 11. no leaks


def test_export_leaves_no_temporary_folders(tmp_path, tiny_models):
    before = set(os.listdir(tempfile.gettempdir()))
    export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "ok")
    with pytest.raises(InvalidOptionError):
        export_onnx(tiny_models("bert", "feature-extraction"), tmp_path / "bad", ExportOptions(opset=99))
    leaked = [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("edgeport")]
    assert leaked == []


# ------------------------------------------------------------------------ 12. malformed sources and adapters


def _safetensors_with_header(path: Path, header) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 16)


@pytest.mark.parametrize("damage,code,phrase", [
    (lambda s: _edit_json(s / "config.json", lambda c: c.update(model_type=["bert"])), SourceError.exit_code,
     "'model_type' must be a non-empty string"),
    (lambda s: _safetensors_with_header(s / "model.safetensors", [1, 2]), SourceError.exit_code, "not a JSON object"),
    (lambda s: _safetensors_with_header(s / "model.safetensors", {"w": {"data_offsets": ["0", "8"]}}),
     SourceError.exit_code, "malformed data_offsets"),
    (lambda s: (s / "modules.json").write_text('{"0": {"type": "Pooling"}}'), SourceError.exit_code,
     "must be a list"),
    (lambda s: ((s / "model.safetensors").rename(s / "shard.safetensors"),
                (s / "model.safetensors.index.json").write_text(json.dumps(
                    {"weight_map": {"a": "../../../../etc/passwd"}}))), UnsafeFileError.exit_code, "refusing to read"),
    (lambda s: _edit_json(s / "config.json", lambda c: c.update(model_type="quantum-transformer")),
     UnsupportedModelError.exit_code, "not one transformers"),
])
def test_malformed_sources(cli, tmp_path, tiny_models, damage, code, phrase):
    src = tmp_path / "src"
    shutil.copytree(tiny_models("bert", "feature-extraction"), src)
    damage(src)
    assert_fails(cli("export", "onnx", src, "-o", tmp_path / "out"), code, phrase, absent=tmp_path / "out")


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("peft_type,phrase", [(3, "must be a peft method name"), ("QUANTUM_LORA", "not a method")])
def test_malformed_adapter_configs(cli, tmp_path, tiny_models, peft_type, phrase):
    from adapters import train_adapter

    adapter = train_adapter(tiny_models("bert", "feature-extraction"), tmp_path / "lora", steps=1)
    _edit_json(adapter / "adapter_config.json", lambda c: c.update(peft_type=peft_type))
    assert_fails(cli("merge", tiny_models("bert", "feature-extraction"), "--adapter", adapter, "-o", tmp_path / "m"),
                 AdapterError.exit_code, phrase, absent=tmp_path / "m")


# ------------------------------------------------------------------------ 13. module:callable sources


@pytest.mark.parametrize("factory,spec,code,phrase", [
    ("cifar_cnn", "images:1x3x9:float32", SourceError.exit_code, "fails on inputs of the --input shapes"),
    ("cifar_cnn", "images:1x3x32x32:int64", SourceError.exit_code, "fails on inputs"),
    ("returns_a_string", "x:1x3:float32", UnsupportedModelError.exit_code, "must return a tensor"),
])
def test_callable_sources_whose_forward_fails(cli, tmp_path, monkeypatch, factory, spec, code, phrase):
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    assert_fails(cli("export", "onnx", f"factories.cnn:{factory}", "-o", tmp_path / "out", "--input", spec), code,
                 phrase, absent=tmp_path / "out")


# ------------------------------------------------------------------------ 16. hand-edited manifests, garbage files


@pytest.mark.parametrize("edit,phrase", [
    (lambda d: d["graph"]["inputs"][0].update(dtype="complex128"), "graph.inputs[0].dtype"),
    (lambda d: d["graph"]["inputs"][0].update(shape="batch x 8"), "graph.inputs[0].shape"),
    (lambda d: d.update(processing=["labels"]), "'processing' must be object"),
    (lambda d: d["lineage"][0].pop("time"), "lineage[0].time"),
    (lambda d: d["processing"].update(max_length="long"), "processing.max_length"),
])
def test_hand_edited_manifests(cli, onnx_artifacts, tmp_path, edit, phrase):
    art = _copy(onnx_artifacts["encoder"], tmp_path / "art")
    _edit_manifest(art, edit)
    for args in (("inspect", art), ("run", art, "--text", "x"), ("quantize", art, "-o", tmp_path / "q", "--mode", "fp16")):
        assert_fails(cli(*args), ArtifactError.exit_code, phrase, absent=tmp_path / "q")


@pytest.mark.parametrize("member", ["model.onnx", "golden.npz"])
def test_garbage_files_whose_hashes_match(cli, onnx_artifacts, tmp_path, member):
    from edgeport.artifact import finalize_manifest

    art = _copy(onnx_artifacts["classifier"], tmp_path / "art")
    (art / member).write_bytes(b"\x08\x01garbage" * 50)
    artifact = Artifact.load(art, check_files=False)
    finalize_manifest(art, artifact.manifest)        # re-hash: the garbage is "valid" as far as checksums go
    commands = [("quantize", art, "-o", tmp_path / "q", "--mode", "fp16")]
    if member == "model.onnx":
        commands += [("inspect", art), ("run", art, "--input", tmp_path / "f.npz")]
        np.savez(tmp_path / "f.npz", features=np.zeros((1, 8), np.float32))
    for args in commands:
        assert_fails(cli(*args), ArtifactError.exit_code, member, absent=tmp_path / "q")


def test_every_mutation_of_a_manifest_gets_a_clean_answer(cli, onnx_artifacts, tmp_path):
    """Each field of a valid manifest mutated (other types, removed, non-finite, unknown keys):
    inspect and run answer with exit 0 or 7 (damaged artifact), never a traceback."""
    from fuzzing import mutations

    source = onnx_artifacts["classifier"]
    valid = json.loads((source.path / "edgeport.json").read_text())
    art = _copy(source, tmp_path / "art")
    np.savez(tmp_path / "f.npz", features=np.zeros((2, 8), np.float32))
    count = 0
    for label, mutated in mutations(valid):
        (art / "edgeport.json").write_text(json.dumps(mutated, allow_nan=True))
        for args in (("inspect", art, "--no-checksums"), ("run", art, "--input", tmp_path / "f.npz")):
            result = cli(*args)
            assert "Traceback" not in result.output, label
            assert result.exit_code in (0, ArtifactError.exit_code, ModelInputError.exit_code), (label, result.output)
        count += 1
    assert count > 150


# ------------------------------------------------------------------------ 17. API types


@pytest.mark.parametrize("call,error,phrase", [
    (lambda m: m.predict(None), ModelInputError, "needs inputs"),
    (lambda m: m.predict(5), ModelInputError, "list of texts"),
    (lambda m: m.predict(["fine", "\ud800 lone surrogate"]), ModelInputError, "not valid Unicode"),
    (lambda m: m.predict(["x"], batch_size="8"), InvalidOptionError, "batch_size"),
    (lambda m: m.run([1, 2]), ModelInputError, "feeds must be a dict"),
])
def test_api_calls_with_wrong_types(onnx_artifacts, call, error, phrase):
    from edgeport.runtime import load

    with pytest.raises(error, match=phrase):
        call(load(onnx_artifacts["encoder"].path))


@pytest.mark.parametrize("kwargs,error,phrase", [
    ({"path": None}, ArtifactError, "not NoneType"), ({"optimization": "max"}, InvalidOptionError, "optimization"),
    ({"threads": "x"}, InvalidOptionError, "threads"), ({"arena": True}, InvalidOptionError, "unknown runtime setting"),
])
def test_load_with_wrong_arguments(onnx_artifacts, kwargs, error, phrase):
    from edgeport.runtime import load

    kwargs = {"path": onnx_artifacts["encoder"].path, **kwargs}
    with pytest.raises(error, match=phrase):
        load(**kwargs)


def test_predict_after_close(onnx_artifacts):
    from edgeport.runtime import load

    model = load(onnx_artifacts["encoder"].path)
    model.close()
    with pytest.raises(ModelInputError, match="closed"):
        model.predict(["hello"])


def test_run_text_on_models_that_take_no_text(cli, onnx_artifacts, tmp_path, tiny_models):
    assert_fails(cli("run", onnx_artifacts["classifier"].path, "--text", "hello"), ModelInputError.exit_code,
                 "takes no text or images, only its raw inputs (edgeport run --input FILE.npz")
    vit = export_onnx(tiny_models("vit", "image-classification"), tmp_path / "vit")
    assert_fails(cli("run", vit.path, "--text", "hello"), ModelInputError.exit_code, "image model")
    assert_fails(cli("run", vit.path, "--text", "hello", "--batch-size", "0"), 2, "--batch-size must be")


# ------------------------------------------------------------------------ 18. output formats


def test_non_finite_outputs_are_an_error_not_invalid_json(cli, tmp_path):
    """`run` prints strict JSON: a model that produces NaN for an input fails for it (exit 12)."""
    from onnx import TensorProto, helper

    from edgeport.artifact import finalize_manifest
    from edgeport.manifest import Manifest

    folder = tmp_path / "log"
    folder.mkdir()
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "log",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])])
    import onnx

    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                    str(folder / "model.onnx"))
    finalize_manifest(folder, Manifest(task="custom", graph={
        "format": "onnx", "file": "model.onnx", "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 2]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}]}))
    np.savez(tmp_path / "ok.npz", x=np.ones((1, 2), np.float32))
    np.savez(tmp_path / "nan.npz", x=-np.ones((1, 2), np.float32))
    result = cli("run", folder, "--input", tmp_path / "ok.npz")
    assert result.exit_code == 0 and json.loads(result.output)["outputs"]["y"] == [[0.0, 0.0]]
    assert_fails(cli("run", folder, "--input", tmp_path / "nan.npz"), ModelInputError.exit_code, "NaN or infinite")
