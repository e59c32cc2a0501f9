"""Keras 3 ``.keras`` files to ExecuTorch: Keras on its torch backend is a torch module, so
the same capture and lowering as any torch source, run in the Keras child process
(keras_worker.py, which picks the backend) and checked here in ExecuTorch's runtime against
Keras' own predictions on held-out digits (or seeded inputs)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np

from ..artifact import Artifact, sha256_file
from ..errors import MissingDependencyError, SourceError, require
from ..outputs import ARTIFACT, check_output
from .keras import check_keras_file, keras_io, keras_side
from .prepare import ExportJob
from ..workdirs import work_folder


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
    with work_folder("edgeport-keras-et-") as work_dir:
        work = Path(work_dir)
        say("loading with Keras (torch backend), capturing and lowering to XNNPACK...")
        info, samples = keras_side(source, work, "executorch", settings)
        model_io = keras_io(info)
        input_name, output_name = model_io.input_name, model_io.output_name
        job = ExportJob(module=None, task=model_io.task, variant="dynamic",
                        input_names=[input_name], output_names=[output_name], input_axes={input_name: {0: "batch"}},
                        output_axes={output_name: {0: "batch"}}, trace_inputs={input_name: samples["input:trace"]},
                        validation_batches=[], processing=model_io.processing, validation_data=model_io.validation_data,
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
