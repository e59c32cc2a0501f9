"""Keras 3 ``.keras`` files to ExecuTorch: Keras on its torch backend is a torch module, so
the same capture and lowering as any torch source, run in the Keras child process
(keras_worker.py, which picks the backend) and checked here in ExecuTorch's runtime against
Keras' own predictions on held-out digits (or seeded inputs)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..artifact import Artifact, sha256_file
from ..errors import MissingDependencyError, SourceError, require
from ..outputs import ARTIFACT, check_output
from .keras import check_keras_file
from .prepare import ExportJob


def export_keras_executorch(source: Path, out, options, say) -> Artifact:
    from .executorch import Program, _bounds, _check_program, _write, at_upper_bounds

    if options.inputs or options.calib:
        raise SourceError("--input and --calib are for module:callable sources; a .keras file declares its input "
                          "and is calibrated on held-out digits (image models)")
    check_output(out, options.force, (source,), ARTIFACT)
    check_keras_file(source)
    if importlib.util.find_spec("keras") is None:
        raise MissingDependencyError("exporting a Keras model needs 'keras', which is not installed; "
                                     "install it with: pip install 'edgeport[keras]'")
    require("executorch", "executorch")
    settings = {k: v for k, v in dataclasses.asdict(options).items()
                if k in ("quantize", "max_batch", "min_cosine", "min_top1_agreement")}
    with tempfile.TemporaryDirectory(prefix="edgeport-keras-et-") as work_dir:
        work = Path(work_dir)
        say("loading with Keras (torch backend), capturing and lowering to XNNPACK...")
        proc = subprocess.run([sys.executable, "-m", "edgeport.export.keras_worker", str(source), str(work),
                               "executorch", json.dumps(settings)],
                              capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "torch"})
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise SourceError(lines[-1] if lines else f"the Keras side of exporting '{source}' failed")
        info = json.loads((work / "info.json").read_text())
        with np.load(work / "samples.npz") as data:
            samples = {k: data[k] for k in data.files}
        shape = info["input_shape"]
        image = len(shape) == 4 and info["input_dtype"].startswith("float")
        classes = info["output_shape"][-1] if len(info["output_shape"]) == 2 else None
        classifier = bool(image and classes and classes > 1)
        input_name, output_name = ("images" if image else "inputs"), ("logits" if classifier else "outputs")
        processing = {}
        if image:
            height, width, channels = shape[1:]
            processing["image"] = {"size": [height, width], "channels": channels, "mean": [0.0] * channels,
                                   "std": [1.0] * channels, "layout": "NHWC", "input_range": [0, 1],
                                   "dynamic_size": False}
        if classifier:
            processing["labels"] = [str(i) for i in range(classes)]
        job = ExportJob(module=None, task="image-classification" if classifier else "custom", variant="dynamic",
                        input_names=[input_name], output_names=[output_name], input_axes={input_name: {0: "batch"}},
                        output_axes={output_name: {0: "batch"}}, trace_inputs={input_name: samples["input:trace"]},
                        validation_batches=[], processing=processing,
                        validation_data="held-out scikit-learn digits, resized" if image else "seeded inputs",
                        sources={source.name: sha256_file(source)}, model_type="keras")
        bounds = _bounds(job, options)
        step = bounds["batch"][1]
        checks, references = [], []
        for name in ("validation", "extra"):
            for start in range(0, len(samples[f"input:{name}"]), step):
                checks.append({input_name: samples[f"input:{name}"][start:start + step]})
                references.append({output_name: samples[f"output:{name}"][start:start + step]})
        checks.append(at_upper_bounds(checks[0], job, bounds))
        references.append({output_name: np.resize(references[0][output_name],
                                                  (step, *references[0][output_name].shape[1:]))})
        lowered = Program(b"", info["executorch"]["scheme"], info["executorch"]["delegation"],
                          info["executorch"]["planned_bytes"], info["executorch"]["candidates"])
        pte = work / "model.pte"
        parity = _check_program(pte, job, bounds, checks, references, options, lowered.scheme,
                                reference_name=f"Keras {info['keras']} ({info['backend']} backend)")
        return _write(out, str(source), job, options, bounds, lowered, pte, checks, references, parity, (source,))
