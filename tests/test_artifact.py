"""Artifacts: atomic writes, schema validation, checksums that catch truncation and tampering."""

from __future__ import annotations

import json

import pytest

from edgeport.artifact import Artifact, finalize_manifest
from edgeport.errors import ArtifactError, OutputExistsError
from edgeport.manifest import SCHEMA_VERSION, Manifest, seal_of
from edgeport.outputs import staged_output
from helpers import folder_names


def _manifest() -> Manifest:
    return Manifest(task="custom", graph={"format": "onnx", "file": "model.onnx", "opset": 17,
                                          "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
                                          "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}]})


def _make(path, payload=b"0123456789" * 100):
    with staged_output(path, force=False) as folder:
        (folder / "model.onnx").write_bytes(payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "extra.txt").write_text("hello")
        manifest = _manifest()
        manifest.add_lineage("test", {"a": 1}, {"python": "3"})
        finalize_manifest(folder, manifest)
    return Artifact.load(path)


def test_round_trip_records_every_file(tmp_path):
    artifact = _make(tmp_path / "a")
    assert set(artifact.manifest.files) == {"model.onnx", "sub/extra.txt"}
    assert artifact.manifest.files["model.onnx"]["size"] == 1000
    assert artifact.manifest.lineage[0]["stage"] == "test"
    data = json.loads((tmp_path / "a" / "edgeport.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 3
    assert Manifest.from_dict(data).to_dict() == {k: v for k, v in data.items() if k != "seal"}
    assert set(data["seal"]["sha256"]) >= {"task", "graph", "files", "lineage"}


def test_truncated_file_is_detected(tmp_path):
    _make(tmp_path / "a")
    (tmp_path / "a" / "model.onnx").write_bytes(b"0123")
    with pytest.raises(ArtifactError, match="truncated"):
        Artifact.load(tmp_path / "a")
    assert Artifact.load(tmp_path / "a", check_files=False).task == "custom"


def test_same_size_tampering_is_detected(tmp_path):
    _make(tmp_path / "a")
    (tmp_path / "a" / "sub" / "extra.txt").write_text("HELLO")
    with pytest.raises(ArtifactError, match="sha256"):
        Artifact.load(tmp_path / "a")


def test_missing_file_is_detected(tmp_path):
    _make(tmp_path / "a")
    (tmp_path / "a" / "sub" / "extra.txt").unlink()
    with pytest.raises(ArtifactError, match="missing its file 'sub/extra.txt'"):
        Artifact.load(tmp_path / "a")


@pytest.mark.parametrize("edit,phrase", [
    (lambda d: d.update(task="dancing"), "'task' must be one of"),
    (lambda d: d.update(schema_version=99), "newer than this edgeport"),
    (lambda d: d.pop("files"), "'files'"),
    (lambda d: d["graph"].pop("inputs"), "graph.inputs"),
    (lambda d: d.update(precision={"mode": "int3"}), "precision.mode"),
])
def test_schema_problems_are_named(tmp_path, edit, phrase):
    _make(tmp_path / "a")
    path = tmp_path / "a" / "edgeport.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=phrase):
        Artifact.load(tmp_path / "a")


def test_manifest_cannot_point_outside_the_folder(tmp_path):
    _make(tmp_path / "a")
    (tmp_path / "secret").write_text("x")
    path = tmp_path / "a" / "edgeport.json"
    data = json.loads(path.read_text())
    data["files"]["../secret"] = {"sha256": "0" * 64, "size": 1}
    data["seal"] = seal_of(data)              # someone who knows the format: the confinement check still holds
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="outside the artifact"):
        Artifact.load(tmp_path / "a")


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        Artifact.load(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArtifactError, match="no edgeport.json"):
        Artifact.load(tmp_path / "plain")
    (tmp_path / "plain" / "edgeport.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Artifact.load(tmp_path / "plain")


def test_failed_stage_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_output(tmp_path / "out", force=False) as folder:
            (folder / "half-written").write_text("x")
            raise RuntimeError("stage failed")
    assert folder_names(tmp_path) == set()


def test_failed_forced_stage_keeps_the_old_artifact(tmp_path):
    _make(tmp_path / "a")
    with pytest.raises(RuntimeError):
        with staged_output(tmp_path / "a", force=True) as folder:
            (folder / "model.onnx").write_text("new")
            raise RuntimeError("stage failed")
    assert Artifact.load(tmp_path / "a").manifest.files["model.onnx"]["size"] == 1000
    assert folder_names(tmp_path) == {"a"}


def _force_onto(path):
    with staged_output(path, force=True) as folder:
        (folder / "model.onnx").write_text("new")
        finalize_manifest(folder, _manifest())


@pytest.mark.parametrize("plant", ["manifest-only", "files-as-list", "deep-json", "user-folder"])
def test_force_never_replaces_a_folder_whose_manifest_edgeport_did_not_write(tmp_path, plant):
    """Folders of the user's own that hold a file named edgeport.json: alone, naming the
    user's files as a list, too deeply nested to parse, beside the user's code."""
    folder = tmp_path / "project"
    folder.mkdir()
    manifest = {"manifest-only": '{"name": "my settings"}', "files-as-list": '{"files": ["notes.txt"]}',
                "deep-json": "[" * 100_000 + "]" * 100_000, "user-folder": '{"my": "own settings"}'}[plant]
    (folder / "edgeport.json").write_text(manifest)
    if plant != "manifest-only":
        (folder / "src").mkdir()
        (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="is not an edgeport artifact"):
        _force_onto(folder)
    assert (folder / "edgeport.json").read_text() == manifest


@pytest.mark.parametrize("plant", ["file", "nested-file", "hidden-file", "empty-folder", "link-to-folder"])
def test_force_never_deletes_what_a_user_put_into_an_artifact(tmp_path, plant):
    _make(tmp_path / "a")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    target = tmp_path / "a"
    planted = {"file": "NOTES.txt", "nested-file": "sub/deeper/notes.txt", "hidden-file": ".secret",
               "empty-folder": "my_empty_folder", "link-to-folder": "mylink"}[plant]
    if plant == "empty-folder":
        (target / planted).mkdir()
    elif plant == "link-to-folder":
        (target / planted).symlink_to(outside)
    else:
        (target / planted).parent.mkdir(parents=True, exist_ok=True)
        (target / planted).write_text("mine")
    with pytest.raises(OutputExistsError, match=f"did not write there.*[(]{planted.split('/')[0]}"):
        _force_onto(target)
    assert (target / planted).exists() and (outside / "keep.txt").read_text() == "precious"


def test_force_keeps_an_artifact_whose_listed_file_was_edited_by_hand(tmp_path):
    _make(tmp_path / "a")
    model = tmp_path / "a" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"!")          # same size, other bytes: a hand edit
    edited = model.read_bytes()
    with pytest.raises(OutputExistsError, match=r"model\.onnx \(edited\)"):
        _force_onto(tmp_path / "a")
    assert model.read_bytes() == edited


def test_force_replaces_an_artifact_holding_only_what_its_manifest_lists(tmp_path):
    _make(tmp_path / "a")
    _force_onto(tmp_path / "a")
    assert set(Artifact.load(tmp_path / "a").manifest.files) == {"model.onnx"}


def test_existing_output_is_never_overwritten_without_force(tmp_path):
    _make(tmp_path / "a")
    with pytest.raises(OutputExistsError, match="--force"):
        _make(tmp_path / "a", payload=b"other")
    assert Artifact.load(tmp_path / "a").manifest.files["model.onnx"]["size"] == 1000
