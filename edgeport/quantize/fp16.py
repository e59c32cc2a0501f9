"""FP16 conversion that stays finite.

The best-known failure of FP16 converters is a tensor past 65504 becoming inf (and then
NaN after a normalisation).  Before converting, every float tensor is measured in FP32
on the calibration data and the nodes producing values near the FP16 range are kept in
FP32; after converting, any node still producing non-finite values is kept too, until
the model is finite.  Conversion itself is onnxruntime.transformers.float16 (the
onnxconverter-common one produced a MiniLM ONNX Runtime refuses to load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import ExampleSet
from ..errors import ParityError
from . import graph
from .encoder import EncoderJob, EncoderRecipe
from .recipes import register
from .sensitivity import FallbackResult

FP16_MAX = 65504.0
SAFETY = 0.5                 # keep a margin: sums inside the next op can still overflow
MAX_REPAIR_ROUNDS = 20


def _float_tensors(model) -> list[str]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.output)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return [o for n in model.graph.node for o in n.output if o in floats]


def overflowing_nodes(model, examples: ExampleSet) -> list[str]:
    """Nodes that produce or consume FP32 values near the FP16 range on the examples.

    Consumers count too: a node kept in FP32 hands its large output to the next node
    through a Cast, and that Cast would overflow."""
    tensors = _float_tensors(model)
    session = graph.session_with_outputs(model, tensors)
    peak: dict[str, float] = {}
    for feeds in examples.batches:
        for name, value in zip(tensors, session.run(tensors, feeds)):
            if value.size:
                peak[name] = max(peak.get(name, 0.0), float(np.nanmax(np.abs(value))))
    limit = FP16_MAX * SAFETY
    return sorted(n.name for n in model.graph.node
                  if any(peak.get(t, 0.0) > limit for t in list(n.input) + list(n.output)))


def convert(model, blocked: list[str], keep_io_types: bool):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=keep_io_types, node_block_list=list(blocked),
                                         disable_shape_infer=False)
    _remove_cast_round_trips(converted)
    return converted


def _remove_cast_round_trips(model) -> None:
    """Between two nodes kept in FP32 the converter inserts Cast(fp16) then Cast(fp32): a
    round trip through FP16 that overflows exactly the values the nodes were kept for."""
    import onnx

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None)

    graph_outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed = set()
    for node in model.graph.node:
        if node.op_type != "Cast" or cast_to(node) != onnx.TensorProto.FLOAT16:
            continue
        users = consumers.get(node.output[0], [])
        if not users or node.output[0] in graph_outputs:
            continue
        if all(u.op_type == "Cast" and cast_to(u) == onnx.TensorProto.FLOAT for u in users):
            for user in users:
                for consumer in consumers.get(user.output[0], []):
                    consumer.input[:] = [node.input[0] if i == user.output[0] else i for i in consumer.input]
                if user.output[0] in graph_outputs:
                    continue
                removed.add(id(user))
            if all(id(u) in removed for u in users):
                removed.add(id(node))
    keep = [n for n in model.graph.node if id(n) not in removed]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _nonfinite_tensors(model, examples: ExampleSet) -> tuple[list[str], set[str], dict[str, str]]:
    outputs = [o for n in model.graph.node for o in n.output if o]
    producer = {o: n.name for n in model.graph.node for o in n.output}
    session = graph.session_with_outputs(model, outputs)
    names = [o.name for o in session.get_outputs()]
    bad = set()
    for feeds in examples.batches:
        for name, value in zip(names, session.run(names, feeds)):
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                bad.add(name)
    return outputs, bad, producer


def first_nonfinite_node(fp16_model, examples: ExampleSet, fp32_model) -> str | None:
    """The first node, in graph order, whose output is NaN or inf in FP16 but finite in FP32.

    None while the graph's outputs are finite: intermediate infinities can be deliberate
    (an attention mask of -inf, or float32's minimum turning into -inf, before a softmax).
    """
    order, bad, producer = _nonfinite_tensors(fp16_model, examples)
    if not any(o.name in bad for o in fp16_model.graph.output):
        return None
    _, expected_bad, _ = _nonfinite_tensors(fp32_model, examples)
    constants = {n.name for n in fp16_model.graph.node if n.op_type == "Constant"}
    for name in order:
        if name in bad and name not in expected_bad and producer[name] not in constants:
            return producer[name]
    return next((o.name for o in fp16_model.graph.output if o.name in bad), None)


def convert_fp16(model, examples: ExampleSet, keep_io_types: bool = True, fallback: bool = True,
                 extra_blocked: list[str] = ()) -> tuple[object, list[str]]:
    """Convert ``model``; returns the FP16 model and the nodes kept in FP32."""
    import onnx

    original = onnx.ModelProto()
    original.CopyFrom(model)
    blocked = sorted(set(extra_blocked) | (set(overflowing_nodes(model, examples)) if fallback else set()))
    for _ in range(MAX_REPAIR_ROUNDS):
        copy = onnx.ModelProto()
        copy.CopyFrom(original)
        converted = convert(copy, blocked, keep_io_types)
        if not fallback:
            return converted, blocked
        culprit = first_nonfinite_node(converted, examples, original)
        if culprit is None:
            return converted, blocked
        # Converted node names can carry a suffix; map back to the original node.
        original_names = {n.name for n in original.graph.node}
        if culprit not in original_names or culprit in blocked:
            return converted, blocked
        blocked.append(culprit)
    return converted, blocked


@register
class Fp16(EncoderRecipe):
    mode = "fp16"
    default_min_cosine = 0.999

    def prepare(self, job: EncoderJob) -> Path:
        model = graph.load(job.source.model_path)
        graph.ensure_node_names(model)
        prepared = job.work / "prepared.onnx"
        graph.save(model, prepared)
        return prepared

    def build(self, job: EncoderJob, prepared: Path, dest: Path, exclude: list[str]) -> None:
        model, kept = convert_fp16(graph.load(prepared), job.calibration, job.options.keep_io_types,
                                   job.options.fp16_fallback, exclude)
        job.details.setdefault("fp16_kept", {})[dest] = kept       # per candidate: the search builds several
        graph.save(model, dest)

    def candidates(self, job: EncoderJob, prepared: Path) -> list[str]:
        ops = ("MatMul", "Gemm", "Conv", "Add", "Mul", "Softmax", "LayerNormalization", "SkipLayerNormalization")
        return [n.name for n in graph.load(prepared).graph.node if n.op_type in ops]

    def finish(self, job: EncoderJob, result: FallbackResult) -> FallbackResult:
        # Check the winner with graph optimizations off: ONNX Runtime's CPU optimizations run
        # some FP16 nodes in FP32, hiding overflows that a GPU would hit.
        culprit = first_nonfinite_node(graph.load(result.model_file), job.evaluation,
                                       graph.load(job.source.model_path))
        if culprit:
            raise ParityError(f"the fp16 model produces NaN or infinite values from node '{culprit}' on "
                              f"{job.evaluation.description} (seen with graph optimizations off, as a GPU runs it); "
                              "drop --no-fp16-fallback to keep overflowing nodes in FP32")
        return result

    def precision(self, job: EncoderJob, result: FallbackResult, operators: dict[str, int]) -> dict[str, Any]:
        overflowing = job.details.get("fp16_kept", {}).get(result.model_file, [])
        precision = {"mode": self.mode, "target": job.target.name, "target_detected": job.target_detected,
                     "kept_fp32_nodes": sorted(set(result.kept) | set(overflowing)),
                     "calibration": job.calibration.to_dict(), "operators": operators,
                     "keep_io_types": job.options.keep_io_types, "fp16_fallback": job.options.fp16_fallback,
                     "levers": ["overflowing nodes kept in FP32"] if job.options.fp16_fallback else []}
        if result.steps:
            precision["sensitivity"] = result.ranking_records()
        return precision
