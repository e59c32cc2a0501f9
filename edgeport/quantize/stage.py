"""``edgeport quantize``: the stage that drives a recipe.  It refuses what no recipe can use
before any work (options, the output, an input of the wrong format or already quantized),
hands the recipe a job, and writes what the recipe returns as a new artifact: the graph,
the input's other files, the manifest with the recipe's precision and parity records and a
lineage entry.  Nothing is written unless the recipe's gate passed.
"""

from __future__ import annotations

from pathlib import Path

from ..artifact import Artifact
from ..errors import InvalidOptionError, require
from ..outputs import ARTIFACT, check_output
from ..runtime.formats import format_of
from .options import QuantizeOptions
from .recipes import QuantizeJob, Recipe, modes_for, recipe_for
from .targets import get_target
from .writing import write_artifact
from ..workdirs import work_folder


def quantize(artifact_path, out, options: QuantizeOptions, progress=None, calibration_progress=None) -> Artifact:
    say = progress or (lambda message: None)
    options.check()
    recipe = recipe_for(options.mode)
    target, detected = get_target(options.target)
    recipe.check(options, target)
    check_output(out, options.force, (artifact_path,), ARTIFACT)
    require("onnx", "quantize")
    source = Artifact.load(artifact_path)
    check_source(source, artifact_path, recipe)
    options.budget().check_task(source.task)
    with work_folder("edgeport-quantize-") as work_dir:
        job = QuantizeJob(source, options, target, detected, Path(work_dir), say, calibration_progress)
        outcome = recipe.run(job)
        return write_artifact(out, source, recipe, job, outcome, options.force)


def check_source(source: Artifact, path, recipe: Recipe) -> None:
    graph_format = format_of(source)
    if graph_format.name not in recipe.formats:
        others = modes_for(graph_format.name)
        hint = f"; for it use --mode {' or '.join(others)}" if others else "; quantize the ONNX artifact it came from"
        raise InvalidOptionError(f"--mode {recipe.mode} quantizes {recipe.purpose}, and '{path}' holds "
                                 f"{graph_format.a_description} of a {source.task} model{hint}")
    mode = source.manifest.precision.get("mode", "fp32")
    if mode != "fp32":
        raise InvalidOptionError(f"'{path}' is already {mode}; quantize the FP32 artifact instead")
