"""Sibling MatMuls packed into one: where several MatMuls multiply the same activation by
constant weights of the same depth (a decoder's query, key and value projections; its gate
and up projections), their weights are concatenated along the output axis and one MatMul
followed by a Split replaces them.

Why: a decode step multiplies one row by each weight, and at one row a MatMul's cost is
mostly its dispatch and the thread pool's fork and join, not its arithmetic; ONNX Runtime
GenAI's builder packs these projections for that reason.  Each output column is the same dot
product as before (the weights are only laid side by side), so the values are the same up to
the kernel's accumulation order.  Weight-only quantization (MatMulNBits) then quantizes the
packed weight as one.

Only weights nothing else can see are packed: float32 initializers (loaded, not external
references) used by exactly one node, not graph inputs or outputs, not referenced from a
subgraph.  The Split takes its sizes as an input, so graphs below opset 13 are left alone.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

MIN_PACK = 2
SPLIT_SIZES_AS_INPUT = 13       # the first opset whose Split takes its sizes as an input


def pack_sibling_matmuls(model) -> int:
    """Pack every group of sibling MatMuls in ``model`` (in place); returns how many MatMuls
    were removed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < SPLIT_SIZES_AS_INPUT:
        return 0
    weights = {init.name: init for init in graph.initializer}
    uses = _uses(graph)
    visible = {v.name for v in list(graph.input) + list(graph.output)}
    groups: dict[tuple[str, int], list] = defaultdict(list)
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is not None and len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT \
                and weight.data_location != TensorProto.EXTERNAL and uses[weight.name] == 1 \
                and weight.name not in visible:
            groups[(node.input[0], int(weight.dims[0]))].append(node)
    taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
    taken |= set(uses) | set(weights) | visible
    removed = 0
    for (activation, _depth), nodes in groups.items():
        if len(nodes) < MIN_PACK:
            continue
        stem = _fresh(taken, f"{nodes[0].input[1]}.packed")
        sizes_name, product = _fresh(taken, f"{stem}.sizes"), _fresh(taken, f"{stem}.product")
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        packed = numpy_helper.from_array(np.concatenate(arrays, axis=1), stem)
        sizes = numpy_helper.from_array(np.asarray([a.shape[1] for a in arrays], np.int64), sizes_name)
        first = min(list(graph.node).index(n) for n in nodes)
        matmul = helper.make_node("MatMul", [activation, stem], [product], name=_fresh(taken, f"{stem}.matmul"))
        split = helper.make_node("Split", [product, sizes_name], [n.output[0] for n in nodes], axis=-1,
                                 name=_fresh(taken, f"{stem}.split"))
        for node in nodes:
            graph.node.remove(node)
            graph.initializer.remove(weights.pop(node.input[1]))
        graph.node.insert(first, split)
        graph.node.insert(first, matmul)
        graph.initializer.extend([packed, sizes])
        removed += len(nodes) - 1
    return removed


def _uses(graph) -> dict[str, int]:
    """How many node inputs name each value, subgraphs (If, Loop, Scan bodies) included."""
    counts: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            counts[name] += 1
        for attribute in node.attribute:
            for body in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                for name, count in _uses(body).items():
                    counts[name] += count
    return counts


def _fresh(taken: set, name: str) -> str:
    """``name``, or ``name.1``, ``name.2``... whichever no node or value of the graph has."""
    candidate, count = name, 1
    while candidate in taken:
        candidate, count = f"{name}.{count}", count + 1
    taken.add(candidate)
    return candidate
