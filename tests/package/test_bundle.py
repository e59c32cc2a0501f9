"""Bundles: reproducible bytes, a round trip with every checksum verified, and extraction that
refuses tampered, climbing, linked and oversized members with nothing written outside."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from edgeport.errors import ArtifactError, OutputExistsError, UnsafeFileError
from edgeport.package import PackageOptions, package
from edgeport.runtime import load
from edgeport.runtime import bundle as bundle_module
from edgeport.runtime.bundle import ExtractionLimits, cache_root, extract_bundle, open_bundle, sha256_of
from helpers import assert_fails, rewrite_bundle, tar_member


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_round_trip_loads_and_predicts_like_the_artifact(onnx_artifacts, tmp_path, cli):
    encoder = onnx_artifacts["encoder"]
    result = cli("package", encoder.path, "--format", "bundle", "-o", tmp_path / "enc.tar.gz")
    assert result.exit_code == 0, result.output
    texts = ["Return the number of items.", "hello"]
    np.testing.assert_allclose(load(tmp_path / "enc.tar.gz").predict(texts), load(encoder.path).predict(texts), atol=1e-6)
    inspected = cli("inspect", tmp_path / "enc.tar.gz", "--json")
    assert inspected.exit_code == 0 and '"checksums": "verified"' in inspected.output
    verified = cli("verify", tmp_path / "enc.tar.gz", "--reference", encoder.path, "--min-cosine", "0.9999")
    assert verified.exit_code == 0, verified.output
    with tarfile.open(tmp_path / "enc.tar.gz") as archive:
        names = archive.getnames()
    assert names[:3] == ["enc", "enc/bundle.json", "enc/SHA256SUMS"] and "enc/requirements.txt" in names
    assert "enc/artifact/edgeport.json" in names and "enc/artifact/tokenizer.json" in names


def test_two_packagings_are_byte_identical(onnx_artifacts, tmp_path):
    for folder in ("a", "b"):
        package(onnx_artifacts["classifier"].path, tmp_path / folder / "clf.tar.gz")
    assert (tmp_path / "a" / "clf.tar.gz").read_bytes() == (tmp_path / "b" / "clf.tar.gz").read_bytes()


def test_mobile_target_adds_the_ort_format_and_operator_list(onnx_artifacts, tmp_path, monkeypatch):
    """The .ort file runs in ONNX Runtime and gives the ONNX model's outputs.  (Unlike a portable
    bundle it is not byte-stable: onnxruntime's converter writes one of two layouts, seen
    alternating over six conversions of one model.)"""
    import onnxruntime as ort

    path = package(onnx_artifacts["classifier"].path, tmp_path / "m.tar.gz", PackageOptions(target="ort-mobile"))
    with tarfile.open(path) as archive:
        ops = archive.extractfile("m/mobile/required_operators.config").read().decode()
        (tmp_path / "model.ort").write_bytes(archive.extractfile("m/mobile/model.ort").read())
    assert "ai.onnx;13;Gemm" in ops and "/tmp" not in ops
    # Its reader opens it, though mobile/model.ort is no artifact file and may be any size (a
    # bundle of MiniLM's 90 MB .ort was refused as a small file over 1 MiB).
    monkeypatch.setattr(bundle_module, "SMALL_MEMBER_BYTES", max(len(ops), 2048))
    assert (tmp_path / "model.ort").stat().st_size > bundle_module.SMALL_MEMBER_BYTES
    assert open_bundle(path, into=tmp_path / "opened").task == onnx_artifacts["classifier"].task
    features = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    mobile = ort.InferenceSession(str(tmp_path / "model.ort"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(mobile.run(None, {"features": features})[0],
                               load(onnx_artifacts["classifier"].path).run({"features": features})["logits"], atol=1e-5)


def _link(name, target, hard=False):
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


@pytest.mark.parametrize("edit,error,phrase", [
    (lambda m: m.__setitem__(-1, (m[-1][0], m[-1][1][:-1] + b"!")), ArtifactError, "does not match its sha256"),
    (lambda m: m.append(tar_member("/etc/edgeport-evil")), UnsafeFileError, "absolute path"),
    (lambda m: m.append(tar_member("clf/../../escaped")), UnsafeFileError, "climbs out"),
    (lambda m: m.append(_link("clf/artifact/evil", "/etc/passwd")), UnsafeFileError, "a link"),
    (lambda m: m.append(_link("clf/artifact/hard", "clf/bundle.json", hard=True)), UnsafeFileError, "a link"),
    (lambda m: m.append(tar_member("clf/artifact/extra.bin", b"\0" * 2048)), UnsafeFileError, "over the"),
])
def test_hostile_bundles_are_refused_and_nothing_lands_outside(onnx_artifacts, tmp_path, edit, error, phrase):
    bundle = package(onnx_artifacts["classifier"].path, tmp_path / "clf.tar.gz")
    bad = rewrite_bundle(bundle, tmp_path / "bad.tar.gz", edit)
    target = tmp_path / "unpacked" / "here"
    before = set(tmp_path.rglob("*"))
    with pytest.raises(error, match=phrase):
        if "over the" in phrase:
            extract_bundle(bad, target, ExtractionLimits(max_member_bytes=1024))
        else:
            open_bundle(bad, into=target)
    created = set(tmp_path.rglob("*")) - before
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert all(tmp_path / "unpacked" in p.parents or p == tmp_path / "unpacked" for p in created), created
    if error is UnsafeFileError:
        assert not target.exists()


def test_cli_refuses_a_tampered_bundle(onnx_artifacts, tmp_path, cli):
    bundle = package(onnx_artifacts["classifier"].path, tmp_path / "clf.tar.gz")
    bad = rewrite_bundle(bundle, tmp_path / "bad.tar.gz",
                   lambda m: m.__setitem__(-1, (m[-1][0], m[-1][1][:-1] + b"!")))
    np.savez(tmp_path / "f.npz", features=np.zeros((1, 8), np.float32))
    assert_fails(cli("run", bad, "--input", tmp_path / "f.npz"), ArtifactError.exit_code, "sha256")


def test_a_bundle_whose_manifest_was_edited_is_refused(onnx_artifacts, tmp_path):
    """The manifest is covered twice: SHA256SUMS and the digest in bundle.json."""
    import hashlib
    import json

    bundle = package(onnx_artifacts["classifier"].path, tmp_path / "clf.tar.gz")

    def edit(members):
        sums = next(i for i, (m, _) in enumerate(members) if m.name.endswith("SHA256SUMS"))
        manifest = next(i for i, (m, _) in enumerate(members) if m.name.endswith("artifact/edgeport.json"))
        data = json.loads(members[manifest][1])
        data["processing"]["labels"] = ["x", "y", "z"]
        payload = json.dumps(data).encode()
        info = members[manifest][0]
        info.size = len(payload)
        members[manifest] = (info, payload)
        lines = members[sums][1].decode().splitlines()
        lines = [f"{hashlib.sha256(payload).hexdigest()}  artifact/edgeport.json" if l.endswith("artifact/edgeport.json")
                 else l for l in lines]
        text = ("\n".join(lines) + "\n").encode()
        members[sums][0].size = len(text)
        members[sums] = (members[sums][0], text)

    bad = rewrite_bundle(bundle, tmp_path / "bad.tar.gz", edit)
    with pytest.raises(ArtifactError, match="was edited"):
        open_bundle(bad, into=tmp_path / "x")


def test_a_file_that_is_not_a_bundle(tmp_path, cli):
    (tmp_path / "fake.tar.gz").write_bytes(b"not gzip at all")
    assert_fails(cli("inspect", tmp_path / "fake.tar.gz"), ArtifactError.exit_code, "not an edgeport bundle")


def test_force_never_replaces_a_users_archive_that_only_looks_like_a_bundle(onnx_artifacts, tmp_path, cli):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "webpack-bundle.json").write_text("{}")
    (tmp_path / "site" / "bundle.json").write_text('{"format": "webpack"}')
    archive = tmp_path / "backup.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "site", arcname="site")
    before = archive.read_bytes()
    assert_fails(cli("package", onnx_artifacts["encoder"].path, "--format", "bundle", "-o", archive, "--force"),
                 OutputExistsError.exit_code, "is not an edgeport bundle")
    assert archive.read_bytes() == before
    ours = tmp_path / "ours.tar.gz"                   # edgeport's own bundle is still replaced
    assert cli("package", onnx_artifacts["encoder"].path, "--format", "bundle", "-o", ours).exit_code == 0
    assert cli("package", onnx_artifacts["encoder"].path, "--format", "bundle", "-o", ours, "--force").exit_code == 0


@pytest.mark.parametrize("damage", ["bundle.json removed", "a file in its place"])
def test_a_cache_entry_that_is_no_extraction_is_made_again(onnx_artifacts, tmp_path, damage):
    """An extraction cut short (no bundle.json) or a file at the cache path failed every later
    run ('Directory not empty'); the bundle is the truth, so it is extracted again."""
    path = package(onnx_artifacts["classifier"].path, tmp_path / "clf.tar.gz")
    cached = cache_root() / sha256_of(path)
    open_bundle(path)
    if damage == "bundle.json removed":
        (cached / "bundle.json").unlink()
    else:
        import shutil

        shutil.rmtree(cached)
        cached.write_text("not a folder")
    assert open_bundle(path).task == onnx_artifacts["classifier"].task
    assert (cached / "bundle.json").is_file()
    assert not [p for p in cached.parent.iterdir() if ".discarded-" in p.name]
