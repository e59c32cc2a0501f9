"""The export command's one library call: merge adapters on the way if asked, then export."""

from __future__ import annotations

import os

from ..artifact import Artifact
from ..errors import InvalidOptionError
from ..outputs import ARTIFACT, check_output
from .onnx import ExportOptions, export_onnx
from .source import is_callable_source, is_keras_file
from ..workdirs import work_folder


def export_with_adapters(source: str | os.PathLike, out: str | os.PathLike, options: ExportOptions,
                         adapters: list[str], weights: list[float], progress=None, exporter=export_onnx) -> Artifact:
    """``export onnx|executorch SOURCE --adapter A``: merge (verified) into a temporary folder,
    then export that with ``exporter``; the merge record goes into the artifact's lineage."""
    if not adapters:
        if weights:
            raise InvalidOptionError("--weight weighs the --adapter folders merged first; give --adapter too")
        return exporter(source, out, options, progress=progress)
    other = "Keras file" if is_keras_file(source) else "module:callable source" if is_callable_source(str(source)) \
        else None
    if other:
        raise InvalidOptionError(f"--adapter merges peft adapters into a Hugging Face model folder; a {other} "
                                 "takes none")
    from .lora import MergeOptions, merge

    inputs = () if is_callable_source(str(source)) else (source, *adapters)
    check_output(out, options.force, inputs, ARTIFACT)
    with work_folder("edgeport-merged-") as work:
        merged = merge(source, f"{work}/merged", MergeOptions(list(adapters), list(weights),
                                                               allow_pickle=options.allow_pickle), progress=progress)
        return exporter(merged, out, options, progress=progress, extra_inputs=(source, *adapters))
