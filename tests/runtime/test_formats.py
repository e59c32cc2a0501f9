"""The graph-format registry: one module per format says everything format-specific, and the
rest of edgeport asks it (runners, inspection, Triton, bench kinds, bundles, quantize)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgeport
from edgeport.artifact import Artifact
from edgeport.errors import ArtifactError, InvalidOptionError
from edgeport.manifest import MANIFEST_NAME, Manifest
from edgeport.runtime.formats import all_formats, bench_kinds, format_of, get, make_runner
from edgeport.runtime.onnxrt import QUIET_CPU, OnnxRuntimeRunner
from edgeport.vocabulary import GRAPH_FORMATS

ROOT = Path(edgeport.__file__).parent


def test_every_graph_format_word_has_one_registered_format():
    assert sorted(f.name for f in all_formats()) == sorted(GRAPH_FORMATS)
    assert bench_kinds() == sorted({f.kind for f in all_formats()} | {"torch"})
    with pytest.raises(ArtifactError, match="not one this edgeport runs"):
        get("coreml")


def test_no_module_outside_the_registry_compares_graph_formats():
    """Format-specific code lives in runtime/formats; only builders check what they build from."""
    comparison = re.compile(r"""\[["']format["']\]\s*[!=]=|format_of\([^)]*\)\.name\s*[!=]=""")
    allowed = {ROOT / "engines" / "build.py",            # TensorRT builds from ONNX graphs
               ROOT / "manifest.py"}                     # reading schema 2, which had no "genai" format
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in ROOT.rglob("*.py")
                 if path not in allowed and "formats" not in path.parts
                 for number, line in enumerate(path.read_text().splitlines(), 1) if comparison.search(line)]
    assert offenders == []


def test_onnx_artifacts_get_the_onnx_runner_and_their_graph_files(onnx_artifacts):
    artifact = onnx_artifacts["encoder"]
    graph_format = format_of(artifact)
    assert graph_format.name == "onnx" and graph_format.triton.platform == "onnxruntime_onnx"
    assert graph_format.graph_files(artifact) == ["model.onnx"]
    with make_runner(artifact, QUIET_CPU) as runner:
        assert isinstance(runner, OnnxRuntimeRunner) and runner.device == "CPUExecutionProvider"


def test_causal_lm_manifests_of_schema_2_are_read_as_genai(onnx_artifacts, tmp_path):
    """Versions 1 and 2 wrote GenAI builds as format "onnx" with a generation config."""
    folder = tmp_path / "lm"
    shutil.copytree(onnx_artifacts["encoder"].path, folder)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data.update(schema_version=2, task="text-generation")
    data["processing"]["generation"] = {"config": "model.onnx"}
    assert Manifest.from_dict(data).graph["format"] == "genai"
    data["processing"].pop("generation")
    assert Manifest.from_dict(data).graph["format"] == "onnx"


def test_triton_refuses_a_format_it_cannot_serve_with_the_registry_reason(onnx_artifacts, tmp_path):
    from edgeport.package.triton import TritonOptions, package_triton

    from helpers import edit_manifest

    folder = tmp_path / "genai"
    shutil.copytree(onnx_artifacts["encoder"].path, folder)
    edit_manifest(folder, lambda data: data["graph"].update(format="genai"))
    with pytest.raises(InvalidOptionError, match="Triton cannot serve .*TensorRT-LLM"):
        package_triton(folder, tmp_path / "repo", TritonOptions())
    assert not (tmp_path / "repo").exists()


def test_quantize_names_the_modes_that_take_a_format(onnx_artifacts, tmp_path):
    from edgeport.quantize import QuantizeOptions, quantize

    with pytest.raises(InvalidOptionError, match="causal language models.*ONNX graph"):
        quantize(onnx_artifacts["classifier"].path, tmp_path / "out", QuantizeOptions(mode="int4"))
    assert not (tmp_path / "out").exists()


def test_inspect_shows_the_format_and_its_details(cli, onnx_artifacts):
    result = cli("inspect", onnx_artifacts["classifier"].path, "--json")
    info = json.loads(result.output)
    assert info["format"] == get("onnx").description and info["operators"]
    assert info["model_bytes"] == Artifact.load(onnx_artifacts["classifier"].path).manifest.files["model.onnx"]["size"]


class RecordingRunner(OnnxRuntimeRunner):
    """The ONNX Runtime runner, noting the shape of every batch it runs."""

    shapes: list

    def _infer(self, feeds):
        self.shapes.append(feeds["input_ids"].shape)
        return super()._infer(feeds)


def test_a_profile_minimum_above_one_is_padded_and_batched_within(onnx_artifacts, sentences):
    """An engine's profile (here min batch 3, min length 40, max batch 4) must not break
    predict(): short texts are padded (mask 0), a short batch is filled with copies of its
    last row, and the extra rows are dropped."""
    from edgeport.runtime import load
    from edgeport.runtime.model import Model

    artifact = onnx_artifacts["encoder"]
    runner = RecordingRunner(artifact.model_path, QUIET_CPU, artifact.manifest.inputs,
                             [s["name"] for s in artifact.manifest.graph["outputs"]])
    runner.shapes = []
    runner.shape_range = {spec.name: ((3, 40), (4, 128)) for spec in artifact.manifest.inputs}
    texts = sentences[:5]
    with Model(artifact, runner) as bounded, load(artifact.path, device="cpu") as plain:
        got, want = bounded.predict(texts, batch_size=8), plain.predict(texts)
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)
    assert [rows for rows, _ in runner.shapes] == [4, 3]            # 5 texts: 4, then 1 filled to 3
    assert all(length >= 40 for _, length in runner.shapes)
