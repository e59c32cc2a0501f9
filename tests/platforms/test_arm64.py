"""verify --platform linux/arm64: bundles run by the edgeport runtime in an emulated ARM64
userland (qemu-user-static + a Debian rootfs + aarch64 wheels), compared with their golden
outputs and with this host; a bundle whose golden outputs were altered fails; missing host
tools give the install hint; ship verifies on the recipe's platforms."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import assert_fails
from edgeport.artifact import Artifact, finalize_manifest
from edgeport.errors import MissingDependencyError, ParityError
from edgeport.manifest import GOLDEN_NAME
from edgeport.package import PackageOptions, package

pytestmark = pytest.mark.slow
# The Debian packages .ci/run installs; without them only the tests of the refusals run.
needs_emulator = pytest.mark.skipif(
    not (shutil.which("qemu-aarch64-static") and shutil.which("mmdebstrap")),
    reason="ARM64 emulation needs Debian's qemu-user-static and mmdebstrap (apt-get install qemu-user-static mmdebstrap)")


def _bundle(artifact, path):
    return package(artifact.path, path, PackageOptions(format="bundle"))


@needs_emulator
def test_minilm_int8_bundle_runs_and_matches_on_arm64(cli, minilm_int8, tmp_path):
    bundle = _bundle(minilm_int8, tmp_path / "minilm-int8.tar.gz")
    result = cli("verify", bundle, "--platform", "linux/arm64", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["passed"] and report["guest"]["machine"] == "aarch64"
    assert report["guest"]["onnxruntime"] and report["cpu"] == "cortex-a72"
    golden = report["golden"]
    assert golden["passed"] and golden["sentence_embedding"]["min_cosine"] >= golden["thresholds"]["min_cosine"]
    assert report["vs_host"]["last_hidden_state"]["min_cosine"] > 0.99
    assert "never its speed" in report["note"]
    recorded = json.loads((tmp_path / "minilm-int8.tar.gz.platforms.json").read_text())
    assert recorded["linux/arm64"]["passed"] and recorded["linux/arm64"]["golden"] == golden


@needs_emulator
def test_cnn_bundle_on_another_arm_core_gives_the_hosts_numbers(cli, digits_setup, tmp_path):
    _, fp32, _, _ = digits_setup
    bundle = _bundle(fp32, tmp_path / "cnn.tar.gz")
    result = cli("verify", bundle, "--platform", "linux/arm64", "--cpu", "cortex-a53")
    assert result.exit_code == 0, result.output
    assert "machine aarch64" in result.output and "cortex-a53" in result.output and "PASSED" in result.output
    report = json.loads((tmp_path / "cnn.tar.gz.platforms.json").read_text())["linux/arm64"]
    assert report["guest"]["cpu_part"] == "0xd03"                      # the emulated core's /proc/cpuinfo
    assert report["vs_host"]["logits"]["max_abs_err"] < 1e-5


@needs_emulator
def test_altered_golden_outputs_fail_on_arm64(cli, digits_setup, tmp_path):
    _, fp32, _, _ = digits_setup
    altered = tmp_path / "altered"
    shutil.copytree(fp32.path, altered)
    with np.load(altered / GOLDEN_NAME) as data:
        arrays = {k: data[k] for k in data.files}
    for key in arrays:
        if key.startswith("output"):
            arrays[key] = arrays[key] + 1.0                # consistent checksums, wrong numbers
    np.savez(altered / GOLDEN_NAME, **arrays)
    manifest = Artifact.load(altered, check_files=False).manifest
    finalize_manifest(altered, manifest)
    bundle = _bundle(Artifact.load(altered), tmp_path / "altered.tar.gz")
    result = cli("verify", bundle, "--platform", "linux/arm64")
    assert_fails(result, ParityError.exit_code, "linux/arm64", "against golden.npz")
    assert "machine aarch64" in result.output                   # it ran; the numbers are what failed


def test_missing_qemu_gives_the_install_hint(cli, digits_setup, tmp_path, monkeypatch):
    _, fp32, _, _ = digits_setup
    bundle = _bundle(fp32, tmp_path / "cnn.tar.gz")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = cli("verify", bundle, "--platform", "linux/arm64")
    assert_fails(result, MissingDependencyError.exit_code, "qemu-aarch64-static",
                 "apt-get install qemu-user-static mmdebstrap")
    assert not (tmp_path / "cnn.tar.gz.platforms.json").exists()


def test_bad_platform_arguments(cli, digits_setup, tmp_path):
    _, fp32, _, _ = digits_setup
    assert_fails(cli("verify", fp32.path, "--platform", "linux/arm64"), 2, "folder", "bundle")
    bundle = _bundle(fp32, tmp_path / "cnn.tar.gz")
    assert_fails(cli("verify", bundle, "--platform", "linux/arm64", "--cpu", "pentium"), 2, "cortex-a72")
    assert cli("verify", bundle, "--platform", "linux/riscv64").exit_code == 2
    assert_fails(cli("verify", bundle, "--platform", "linux/arm64", "--reference", fp32.path), 2,
                 "--reference does not apply with --platform")
    assert_fails(cli("verify", fp32.path, "--cpu", "cortex-a72"), 2, "--cpu", "--platform linux/arm64")
    assert not (tmp_path / "cnn.tar.gz.platforms.json").exists()


@needs_emulator
def test_ship_verifies_on_the_recipes_platforms(cli, tmp_path, tiny_models):
    import yaml

    recipe = {"name": "tiny", "output": str(tmp_path / "out"),
              "source": {"model": str(tiny_models("bert", "feature-extraction"))},
              "variants": [{"name": "fp32", "precision": "fp32"}],
              "bench": {"scenarios": ["single-stream"], "rounds": 1, "min_duration": 0.01},
              "package": {"formats": ["bundle"]}, "verify": {"platforms": ["linux/arm64"]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = cli("ship", path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "ship-summary.json").read_text())
    (variant,) = summary["variants"]
    arm = variant["platforms"]["linux/arm64"]
    assert arm["passed"] and arm["guest"]["machine"] == "aarch64"
