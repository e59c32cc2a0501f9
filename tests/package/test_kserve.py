"""package --format kserve: the manifests validated against KServe's own SDK classes (and the
Kubernetes client's), strictly; the folder holds what they point at; bad settings refused."""

from __future__ import annotations

import copy
import importlib.util
import tarfile

import numpy as np
import pytest
import yaml

from edgeport.errors import ArtifactError, InvalidOptionError
from helpers import assert_fails

# Not importorskip: importing kserve here would load its gRPC protos into the test process,
# where they clash with tritonclient's (package/kserve.py runs the SDK in a child for that).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("kserve") is None,
                                reason="the kserve extra: pip install 'edgeport[kserve]'")


@pytest.fixture(scope="module")
def kserve_folder(onnx_artifacts, tmp_path_factory):
    from edgeport.package import KServeOptions, PackageOptions, package

    out = tmp_path_factory.mktemp("kserve") / "deploy"
    options = KServeOptions(name="classifier", namespace="models", storage_uri="s3://bucket/edgeport/classifier",
                            cpu="500m", memory="1Gi", min_replicas=1, max_replicas=3, auth_secret="edgeport-token")
    return package(onnx_artifacts["classifier"].path, out, PackageOptions("kserve", kserve=options))


def _load(folder, name):
    return yaml.safe_load((folder / name).read_text())


def test_the_manifests_validate_against_kserves_sdk(kserve_folder):
    from edgeport.package.kserve import validate

    edgeport_isvc = _load(kserve_folder, "inferenceservice-edgeport.yaml")
    validate(edgeport_isvc, "V1beta1InferenceService")
    validate(_load(kserve_folder, "inferenceservice-triton.yaml"), "V1beta1InferenceService")
    validate(_load(kserve_folder, "servingruntime-triton.yaml"), "V1alpha1ServingRuntime")
    predictor = edgeport_isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    container = predictor["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    assert "edgeport serve /mnt/models " in " ".join(container["command"] + container["args"])
    from importlib import metadata

    # The edgeport the bundle was made with (its requirements.txt pins it), not whatever is newest.
    assert f"'edgeport[serve]=={metadata.version('edgeport')}'" in " ".join(container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["EDGEPORT_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "edgeport-token", "key": "token"}
    assert env["STORAGE_URI"]["value"] == "s3://bucket/edgeport/classifier/bundle/classifier.tar.gz"
    triton = _load(kserve_folder, "inferenceservice-triton.yaml")["spec"]["predictor"]["model"]
    assert triton["runtime"] == "edgeport-triton" and triton["storageUri"] == "s3://bucket/edgeport/classifier/triton"


def test_the_folder_holds_what_the_manifests_point_at(kserve_folder):
    with tarfile.open(kserve_folder / "bundle" / "classifier.tar.gz") as archive:
        assert "classifier/bundle.json" in archive.getnames()
    assert (kserve_folder / "triton" / "classifier" / "config.pbtxt").is_file()
    assert "kubectl -n models apply" in (kserve_folder / "README.txt").read_text()


@pytest.mark.parametrize("storage", ["unpacked", "copied"])
def test_edgeport_serve_opens_the_bundle_where_kserves_storage_initializer_leaves_it(kserve_folder, onnx_artifacts,
                                                                                      tmp_path, storage):
    """/mnt/models as KServe leaves it: a downloaded archive unpacked there and deleted (its
    storage.py extracts a single .tar.gz it fetches), or an archive copied from a volume."""
    import shutil

    from edgeport.runtime import load

    models = tmp_path / "mnt-models"
    models.mkdir()
    archive = kserve_folder / "bundle" / "classifier.tar.gz"
    if storage == "unpacked":
        with tarfile.open(archive) as opened:
            opened.extractall(models, filter="data")
    else:
        shutil.copy(archive, models)
    with load(models) as model:
        assert model.artifact.manifest_sha256 == onnx_artifacts["classifier"].manifest_sha256
        inputs, expected = model.artifact.golden()
        np.testing.assert_allclose(model.run(inputs)["logits"], expected["logits"], rtol=1e-4, atol=1e-5)
    shutil.copy(archive, models / "second.tar.gz")
    with pytest.raises(ArtifactError, match="holds 2 bundle.* give the path of the one to open"):
        load(models)                   # which one was meant? not guessed
    (models / "second.tar.gz").unlink()
    if storage == "unpacked":          # an unpacked bundle is checked like the archive
        link = next(models.rglob("model.onnx")).parent / "etc"
        link.symlink_to("/etc")
        with pytest.raises(ArtifactError, match="holds links"):
            load(models)
        link.unlink()
        next(models.rglob("model.onnx")).write_bytes(b"damaged")
        with pytest.raises(ArtifactError, match="does not match its sha256"):
            load(models)


@pytest.mark.parametrize("edit, phrase", [
    (lambda d: d["spec"]["predictor"].update(minReplica=2), "unknown field(s) ['minReplica']"),
    (lambda d: d["spec"]["predictor"].update(minReplicas="two"), "expected int"),
    (lambda d: d["spec"]["predictor"].update(maxReplicas=True), "expected int"),
    (lambda d: d["spec"]["predictor"]["containers"][0].pop("name"), "name"),
    (lambda d: d["spec"]["predictor"]["containers"][0].update(enviroment=[]), "enviroment"),
    (lambda d: d["spec"]["predictor"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"].pop("key"), "key"),
    (lambda d: d["spec"].pop("predictor"), "predictor"),
    (lambda d: d["metadata"].update(namespce="x"), "namespce"),
], ids=["typo", "string-replicas", "bool-replicas", "container-without-name", "container-typo", "secret-without-key",
        "no-predictor", "metadata-typo"])
def test_the_validation_refuses_what_kserves_own_deserializer_would_let_through(kserve_folder, edit, phrase):
    from edgeport.package.kserve import validate

    document = copy.deepcopy(_load(kserve_folder, "inferenceservice-edgeport.yaml"))
    edit(document)
    with pytest.raises(InvalidOptionError, match="invalid") as caught:
        validate(document, "V1beta1InferenceService")
    assert phrase in str(caught.value)


@pytest.mark.parametrize("args, phrase", [
    (("--name", "Not_A_Name"), "Kubernetes name"),
    (("--memory", "lots"), "Kubernetes quantity"),
    (("--min-replicas", "3", "--max-replicas", "2"), "--max-replicas must be >="),
    (("--storage-uri", "bucket/path"), "URI KServe's storage initializer fetches"),
    (("--storage-uri", "ftp://host/models"), "URI KServe's storage initializer fetches"),
    (("--storage-uri", "s3://"), "URI KServe's storage initializer fetches"),
    (("--image", ""), "is not a container image reference"),
    (("--image", "my image:1"), "is not a container image reference"),
])
def test_bad_settings_are_refused_and_nothing_is_written(cli, onnx_artifacts, tmp_path, args, phrase):
    assert_fails(cli("package", onnx_artifacts["classifier"].path, "--format", "kserve", "-o", tmp_path / "k", *args),
                 InvalidOptionError.exit_code, phrase, absent=tmp_path / "k")


def test_force_replaces_the_folder_only_while_it_holds_nothing_of_the_users(cli, onnx_artifacts, tmp_path):
    folder = tmp_path / "k"
    artifact = onnx_artifacts["classifier"].path
    assert cli("package", artifact, "--format", "kserve", "-o", folder).exit_code == 0
    assert cli("package", artifact, "--format", "kserve", "-o", folder, "--force").exit_code == 0
    (folder / "notes.txt").write_text("mine")
    assert_fails(cli("package", artifact, "--format", "kserve", "-o", folder, "--force"), 5,
                 "(notes.txt)")
    assert (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()
    service = next(folder.glob("inferenceservice-*.yaml"))
    service.write_text(service.read_text() + "# tuned by hand\n")       # edited, not added: kept too
    assert_fails(cli("package", artifact, "--format", "kserve", "-o", folder, "--force"), 5,
                 f"({service.name} (edited))")
    assert service.read_text().endswith("# tuned by hand\n")
