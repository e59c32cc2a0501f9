"""Small ONNX graph utilities the quantizers share: weight-bearing nodes, extra outputs for
capturing activations, topological order, and in-memory sessions."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from ..artifact import save_onnx


def tool_failures() -> tuple[type[BaseException], ...]:
    """What onnx, ONNX Runtime and onnxruntime.quantization raise on a graph they cannot
    handle (onnx's checker and shape-inference errors and ONNX Runtime's own derive from
    Exception only)."""
    import onnx.checker
    import onnx.shape_inference

    from ..runtime.onnxrt import ort_errors

    return (ValueError, RuntimeError, KeyError, IndexError, TypeError, AssertionError,
            onnx.checker.ValidationError, onnx.shape_inference.InferenceError) + ort_errors()


# Nodes that multiply an activation by a constant weight.
MULTIPLYING_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
# Every node quantize_dynamic gives INT8 weights: the multiplications, embedding lookups,
# and ONNX Runtime's fused attention and embedding forms.
QUANTIZABLE_WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "Gather", "Attention", "EmbedLayerNormalization")


class _PreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def without_preprocessing_advice():
    """onnxruntime.quantization logs "Please consider to run pre-processing before
    quantization" on the root logger for every graph it quantizes (edgeport prepares graphs
    its own way: fusions, smoothing, basic rewrites); that line is dropped while a candidate
    is built, and nothing else is."""
    advice, root = _PreprocessingAdvice(), logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def load(path: Path):
    import onnx

    return onnx.load(str(path))


def opset_of(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def initializer_names(model) -> set[str]:
    return {init.name for init in model.graph.initializer}


def weight_nodes(model, op_types=("MatMul", "Gemm", "Conv", "Gather")) -> list:
    """Nodes that multiply or look up a constant weight: what quantization touches."""
    inits = initializer_names(model)
    return [n for n in model.graph.node if n.op_type in op_types and n.name and any(i in inits for i in n.input)]


def ensure_node_names(model) -> None:
    """Quantizers address nodes by name; give unnamed nodes stable names."""
    used = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def topological_sort(model) -> None:
    produced = {i.name for i in model.graph.input} | initializer_names(model) | {""}
    ordered, pending = [], list(model.graph.node)
    while pending:
        remaining = []
        for node in pending:
            if all(name in produced for name in node.input):
                ordered.append(node)
                produced.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input near node '{remaining[0].name}'")
        pending = remaining
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def session_with_outputs(model, names: list[str]):
    """An ONNX Runtime session on a copy of ``model`` that also returns ``names``, with graph
    optimizations off so every tensor stays observable."""
    import onnx

    from ..runtime.onnxrt import INSPECTION, create_session

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return create_session(copy.SerializeToString(), INSPECTION)


def basic_optimized(model_path: Path, dest: Path):
    """``model_path`` after ONNX Runtime's basic rewrites (standard ONNX ops only, the same on
    every provider): constant folding, redundant Transpose/Cast removal, Conv+Add/Mul/
    BatchNormalization fusion.  Saved at ``dest`` and returned."""
    from ..runtime.onnxrt import SessionSettings, create_session

    session = create_session(model_path, SessionSettings(device="cpu", spinning=False, optimization="basic"),
                             save_optimized=dest)
    del session
    return load(dest)


def save(model, path: Path) -> None:
    save_onnx(model, path)


def absmax_per_channel(values: list[np.ndarray], masks: list[np.ndarray | None]) -> np.ndarray:
    """Per-last-axis max |x| over real tokens (mask [batch, seq] when the tensor is [batch, seq, ch])."""
    result = None
    for value, mask in zip(values, masks):
        if mask is not None and value.ndim == 3 and value.shape[:2] == mask.shape:
            value = value[mask.astype(bool)]
        current = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
        result = current if result is None else np.maximum(result, current)
    return result


def activation_peaks(model, batches, names: list[str]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of the tensors ``names`` over ``batches`` (real tokens only)."""
    session = session_with_outputs(model, names)
    peaks: dict[str, np.ndarray] = {}
    for feeds in batches:
        for name, value in zip(names, session.run(names, feeds)):
            current = absmax_per_channel([value], [feeds.get("attention_mask")])
            peaks[name] = current if name not in peaks else np.maximum(peaks[name], current)
    return peaks


def unshare_initializers(model) -> int:
    """Give every consumer of a shared initializer its own copy.

    Exporters deduplicate equal constants (all-zero biases of a LayerNorm and a Gemm,
    say); a static quantizer then tries to quantize one tensor two ways and fails
    ("Unable to get valid quantization scale ... when quantizing bias").
    """
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copies += 1
                new_name = f"{name}__edgeport_copy{copies}"
                model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), new_name))
                node.input[index] = new_name
            else:
                seen.add(name)
    return copies


def gemms_as_matmuls(model) -> int:
    """Rewrite ``Gemm(A, W[, C])`` with a constant ``W`` (alpha = beta = 1, A not transposed)
    as ``MatMul(A, W) [+ C]``, in place; returns how many.  The same product, in the form
    ONNX Runtime's block-wise weight quantizer (MatMulNBits) recognises: GPT-2's Conv1D and
    the TorchScript exporter's ``addmm`` come out as Gemm."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    rewritten, nodes, replaced = 0, [], set()
    for node in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if weight is None or attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 \
                or attributes.get("beta", 1.0) != 1.0 or len(weight.dims) != 2:
            nodes.append(node)
            continue
        weight_name = node.input[1]
        if attributes.get("transB", 0):
            transposed = numpy_helper.to_array(weight).T.copy()
            weight_name = f"{node.input[1]}_transposed_{rewritten}"
            model.graph.initializer.append(numpy_helper.from_array(transposed, weight_name))
            replaced.add(node.input[1])
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product],
                                      name=f"{node.name or 'gemm'}_matmul_{rewritten}"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=f"{node.name or 'gemm'}_bias_{rewritten}"))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
        for init in [i for i in model.graph.initializer if i.name in replaced and i.name not in used]:
            model.graph.initializer.remove(init)
    return rewritten
