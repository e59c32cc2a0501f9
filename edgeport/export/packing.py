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
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

MIN_PACK = 2


def pack_sibling_matmuls(model) -> int:
    """Pack every group of sibling MatMuls in ``model`` (in place); returns how many MatMuls
    were removed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    consumers = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            consumers[name] += 1
    groups: dict[tuple[str, int, int], list] = defaultdict(list)
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is not None and len(weight.dims) == 2 and consumers[weight.name] == 1 and weight.data_type == 1:
            groups[(node.input[0], int(weight.dims[0]), weight.data_type)].append(node)
    removed = 0
    for (activation, _depth, _type), nodes in groups.items():
        if len(nodes) < MIN_PACK:
            continue
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        packed_name = _unique_name(weights, f"{nodes[0].input[1]}.packed")
        packed = numpy_helper.from_array(np.concatenate(arrays, axis=1), packed_name)
        product = f"{packed_name}.product"
        sizes = numpy_helper.from_array(np.asarray([a.shape[1] for a in arrays], np.int64), f"{packed_name}.sizes")
        first = min(list(graph.node).index(n) for n in nodes)
        matmul = helper.make_node("MatMul", [activation, packed_name], [product], name=f"{nodes[0].name}.packed")
        split = helper.make_node("Split", [product, sizes.name], [n.output[0] for n in nodes], axis=-1,
                                 name=f"{nodes[0].name}.unpacked")
        for node in nodes:
            graph.node.remove(node)
            graph.initializer.remove(weights.pop(node.input[1]))
        graph.node.insert(first, split)
        graph.node.insert(first, matmul)
        graph.initializer.extend([packed, sizes])
        weights[packed_name] = packed
        removed += len(nodes) - 1
    return removed


def _unique_name(taken: dict, name: str) -> str:
    candidate, count = name, 1
    while candidate in taken:
        candidate, count = f"{name}.{count}", count + 1
    return candidate
