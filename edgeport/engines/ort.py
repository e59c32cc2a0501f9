"""``export tensorrt --via onnxruntime``: the ONNX artifact kept as it is, with ONNX Runtime's
TensorRT execution provider settings (profile, workspace, precision from the graph) in the
manifest and the engine cache built once, inside the artifact, so a load on the same GPU
and versions starts from the cached engine.  For users who keep one runtime everywhere."""

from __future__ import annotations

import shutil

from ..artifact import Artifact, copy_companions, finalize_manifest
from ..manifest import Manifest
from ..outputs import ARTIFACT, staged_output

CACHE_FOLDER = "trt_cache"


def write_ort_tensorrt(built_from: Artifact, out, plan, record, options, say) -> Artifact:
    from ..runtime.onnxrt import OnnxRuntimeRunner, SessionSettings
    from ..runtime.tensorrt import ort_tensorrt_options
    from .build import add_engine_lineage, engine_parity

    manifest = built_from.manifest
    with staged_output(out, options.force, (built_from.path,), ARTIFACT) as folder:
        graph_file = manifest.graph["file"]
        for name in manifest.files:
            if name.startswith(graph_file):          # the graph and its external data
                shutil.copyfile(built_from.member(name), folder / name)
        copy_companions(built_from, folder)
        (folder / CACHE_FOLDER).mkdir()
        engine = dict(record, cache=CACHE_FOLDER)
        new = Manifest(task=manifest.task, processing=manifest.processing, graph=dict(manifest.graph, engine=engine),
                       precision=dict(manifest.precision), parity=dict(manifest.parity),
                       lineage=list(manifest.lineage))
        say("building the engine cache through ONNX Runtime's TensorRT execution provider...")
        options_for_ep = {"TensorrtExecutionProvider": ort_tensorrt_options(new, folder / CACHE_FOLDER)}
        with OnnxRuntimeRunner(folder / graph_file, SessionSettings(device="tensorrt"), new.inputs,
                               [s["name"] for s in new.graph["outputs"]], options_for_ep) as runner:
            new.parity["tensorrt"] = engine_parity(runner, built_from, plan, options.data)
        add_engine_lineage(new, plan, record, options)
        finalize_manifest(folder, new)
    return Artifact.load(out, check_files=False)
