"""Keras models as a source: ``export onnx model.keras``.

Keras 3 on its torch backend loads a ``.keras`` file without TensorFlow, and its own
``model.export(format="onnx")`` writes a graph with a dynamic batch axis (measured here on
the classic CIFAR-style CNN: 2e-6 from Keras' predictions).  We use Keras' export rather
than torch.onnx on the backend's modules because Keras knows its own calling convention
(channels-last inputs, the functional graph, training-only layers) and torch.onnx would
have to re-derive it.  The Keras side runs in a child process (keras_worker.py) so that
choosing the backend does not change the caller's process.

The artifact records the channels-last layout and the [0, 1] input range, so ``run`` and
``predict`` take raw uint8 images; classification parity is top-1 agreement.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import Artifact, finalize_manifest, sha256_file
from ..errors import InvalidOptionError, MissingDependencyError, SourceError, refuse_unused, require
from ..golden import save_golden
from ..manifest import GOLDEN_NAME, Manifest, tool_versions
from ..outputs import ARTIFACT, check_output, staged_output
from ..parity import compare_outputs
from ..processes import python_module
from ..runtime.onnxrt import OnnxRuntimeRunner
from ..vocabulary import BATCH, MAX_IMAGE_CHANNELS
from .source import recorded_source
from ..workdirs import work_folder


def check_keras_file(source: Path) -> None:
    if source.is_dir():
        if (source / "saved_model.pb").is_file():
            raise SourceError(f"'{source}' is a TensorFlow SavedModel folder, which needs TensorFlow to load; re-save "
                              "the model in Keras 3 format (model.save('model.keras')) and export that")
        raise SourceError(f"'{source}' is a folder; give the .keras file")
    if not source.is_file():
        raise SourceError(f"Keras model '{source}' does not exist")
    if source.suffix.lower() == ".h5":
        raise SourceError(f"'{source}' is a legacy HDF5 Keras model, which needs TensorFlow's Keras 2 to load; "
                          "re-save it in Keras 3 format (model.save('model.keras')) and export that")
    if not zipfile.is_zipfile(source):
        raise SourceError(f"'{source}' is not a Keras 3 file (a .keras file is a zip archive); it is damaged, or "
                          "a legacy HDF5 model renamed: re-save it with model.save('model.keras')")


def keras_side(source: Path, work: Path, target: str = "onnx", settings: dict | None = None) -> tuple[dict, dict]:
    """Run keras_worker.py in a child process on Keras' torch backend (importing keras here
    would pick its default backend): it writes ``target`` (an ONNX graph, or an ExecuTorch
    program with ``settings``) into ``work``; returns its info.json and samples.npz."""
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    proc = subprocess.run(python_module("edgeport.export.keras_worker", source, work, target,
                                        json.dumps(settings or {})), capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise SourceError(lines[-1] if lines else f"the Keras side of exporting '{source}' failed")
    info = json.loads((work / "info.json").read_text())
    with np.load(work / "samples.npz") as data:
        samples = {k: data[k] for k in data.files}
    return info, samples


@dataclass(frozen=True)
class KerasIO:
    """What a Keras model's one input and one output are, from the worker's info.json: an
    image classifier (NHWC images scaled to [0, 1], logits) or a custom tensor model."""

    image: bool
    classifier: bool
    input_name: str
    output_name: str
    processing: dict

    @property
    def task(self) -> str:
        return "image-classification" if self.classifier else "custom"

    @property
    def validation_data(self) -> str:
        return "held-out scikit-learn digits, resized" if self.image else "seeded inputs"


def keras_io(info: dict) -> KerasIO:
    shape = info["input_shape"]
    # A 4-D float input is an image of up to MAX_IMAGE_CHANNELS bands; wider, a tensor fed as it is.
    image = len(shape) == 4 and info["input_dtype"].startswith("float") and (shape[3] or 0) <= MAX_IMAGE_CHANNELS
    classes = info["output_shape"][-1] if len(info["output_shape"]) == 2 else None
    classifier = bool(image and classes and classes > 1)
    processing = {}
    if image:
        height, width, channels = shape[1:]
        processing["image"] = {"size": [height, width], "channels": channels, "mean": [0.0] * channels,
                               "std": [1.0] * channels, "layout": "NHWC", "input_range": [0, 1],
                               "dynamic_size": False}
    if classifier:
        processing["labels"] = [str(i) for i in range(classes)]
    return KerasIO(image, classifier, "images" if image else "inputs", "logits" if classifier else "outputs",
                   processing)


def _rename(model_file: Path, input_name: str, output_name: str) -> None:
    """Name the graph's input and output like the manifest does, and its batch axis ``batch``."""
    import onnx

    model = onnx.load(str(model_file))
    renames = {model.graph.input[0].name: input_name, model.graph.output[0].name: output_name}
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (model.graph.input[0], model.graph.output[0]):
        value.name = renames[value.name]
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = BATCH
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(model_file))


def refuse_export_options(options) -> None:
    """The export options a Keras file does not take, each refused rather than ignored."""
    from .onnx import ExportOptions

    default = ExportOptions()
    refuse_unused((("--opset", options.opset != default.opset), ("--static-shapes", options.static_shapes),
                   ("--sequence-length", options.sequence_length != default.sequence_length),
                   ("--exporter", options.exporter != default.exporter), ("--input", options.inputs),
                   ("--output-name", options.output_names), ("--no-validate", not options.validate),
                   ("--external-data", options.external_data), ("--allow-pickle", options.allow_pickle),
                   ("--runtime-adapter", options.runtime_adapters)),
                  "to a Keras file: Keras itself exports it (at its own opset), batch-dynamic, with one input and "
                  "one output named as the manifest says (images / logits for image classifiers, else inputs / "
                  "outputs), and the export is always checked against Keras' predictions")


def export_keras(source, out, options, progress=None) -> Artifact:
    from .onnx import graph_io

    say = progress or (lambda message: None)
    source = Path(source)
    options.check()
    refuse_export_options(options)
    check_output(out, options.force, (source,), ARTIFACT)
    check_keras_file(source)
    # Importing keras here would pick its default (TensorFlow) backend; only ask whether it is there.
    if importlib.util.find_spec("keras") is None:
        raise MissingDependencyError("exporting a Keras model needs 'keras', which is not installed; "
                                     "install it with: pip install 'edgeport[keras]'")
    require("onnx", "export")
    with work_folder("edgeport-keras-") as work_dir:
        work = Path(work_dir)
        say("loading and exporting with Keras (torch backend)...")
        info, samples = keras_side(source, work)
        model_io = keras_io(info)
        input_name, output_name, task = model_io.input_name, model_io.output_name, model_io.task
        if options.task not in (None, task):
            raise InvalidOptionError(f"--task {options.task}: this Keras model is a '{task}' model (what its output "
                                     "says); drop --task")
        _rename(work / "model.onnx", input_name, output_name)
        reference = {k.split(":", 1)[1]: v for k, v in samples.items() if k.startswith("output:")}
        inputs = {k.split(":", 1)[1]: v for k, v in samples.items() if k.startswith("input:")}
        thresholds = {"atol": options.atol, "rtol": options.rtol}
        with OnnxRuntimeRunner(work / "model.onnx") as runner:
            reports = [compare_outputs({output_name: reference[name]}, runner.run({input_name: inputs[name]}),
                                       task=task, data=f"{name} batch {list(inputs[name].shape)}",
                                       reference_name=f"Keras {info['keras']} ({info['backend']} backend)",
                                       thresholds=thresholds) for name in ("validation", "extra")]
        for report in reports:
            report.raise_for_failure("the exported ONNX model")
        parity = reports[0]
        parity.data = model_io.validation_data + f"; {len(inputs['extra'])} more at another batch size"
        with staged_output(out, options.force, (source,), ARTIFACT) as staging:
            (staging / "model.onnx").write_bytes((work / "model.onnx").read_bytes())
            save_golden(staging / GOLDEN_NAME, {input_name: inputs["validation"]},
                        {output_name: reference["validation"]})
            graph_inputs, graph_outputs, opset = graph_io(staging / "model.onnx")
            manifest = Manifest(task=task, processing=model_io.processing,
                                graph={"format": "onnx", "file": "model.onnx", "opset": opset, "inputs": graph_inputs,
                                       "outputs": graph_outputs, "static_shapes": False, "external_data": False},
                                precision={"mode": "fp32", "kept_fp32_nodes": [], "calibration": None},
                                parity={"export": parity.to_dict()})
            manifest.add_lineage("export", parameters={"source": recorded_source(source), "task": task,
                                                       "route": "keras-export", "keras_backend": info["backend"],
                                                       "model_type": "keras", "layers": info["layers"]},
                                 tools={**tool_versions("torch", "onnx", "onnxruntime"), "keras": info["keras"]},
                                 sources={source.name: sha256_file(source)})
            finalize_manifest(staging, manifest)
    return Artifact.load(out, check_files=False)
