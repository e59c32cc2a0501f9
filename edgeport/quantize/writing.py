"""Writing a quantized artifact: the recipe's graph under the source's graph file name, the
source's other files, and a manifest with the recipe's precision, parity and lineage; also
a whole candidate artifact in a work folder, for checks that load folders."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..artifact import Artifact, copy_companions, finalize_manifest
from ..manifest import Manifest, tool_versions
from ..outputs import ARTIFACT, staged_output
from . import graph
from .recipes import Outcome, QuantizeJob, Recipe


def assemble(folder: Path, source: Artifact, model_file: Path, manifest: Manifest) -> None:
    """An artifact in ``folder``: the quantized graph under the source's graph file name, the
    source's other files (tokenizer, golden data, configs), and the manifest, hashed."""
    graph_file = source.manifest.graph["file"]
    graph.save(graph.load(model_file), folder / graph_file)
    copy_companions(source, folder)
    manifest.graph = dict(manifest.graph, external_data=(folder / f"{graph_file}.data").exists())
    finalize_manifest(folder, manifest)


def new_manifest(source: Artifact, outcome: Outcome, model_file: Path) -> Manifest:
    """The quantized artifact's manifest: the source's, with the new graph's opset, the
    recipe's precision, its parity records added, and no lineage entry yet."""
    return Manifest(task=source.task, processing=source.manifest.processing,
                    graph=dict(source.manifest.graph, opset=graph.opset_of(graph.load(model_file))),
                    precision=outcome.precision, parity={**source.manifest.parity, **outcome.parity},
                    lineage=list(source.manifest.lineage))


def write_artifact(out, source: Artifact, recipe: Recipe, job: QuantizeJob, outcome: Outcome, force: bool) -> Artifact:
    manifest = new_manifest(source, outcome, outcome.model_file)
    graph_file = source.manifest.graph["file"]
    manifest.add_lineage("quantize", parameters=outcome.parameters, tools=tool_versions(*recipe.tools),
                         sources={"input_artifact": str(source.path), "input_manifest": source.manifest_sha256,
                                  graph_file: source.manifest.files[graph_file]["sha256"]},
                         notes=job.notes)
    with staged_output(out, force, (source.path,), ARTIFACT) as folder:
        assemble(folder, source, outcome.model_file, manifest)
    return Artifact.load(out, check_files=False)   # assemble hashed these very files


def candidate_folder(folder: Path, source: Artifact, outcome: Outcome) -> Artifact:
    """A complete artifact of a candidate in a work folder, for recipes whose parity check
    needs one (ONNX Runtime GenAI loads folders, not graphs)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    assemble(folder, source, outcome.model_file, new_manifest(source, outcome, outcome.model_file))
    return Artifact.load(folder, check_files=False)
