"""Sibling MatMuls packed into one (edgeport.export.packing): the same values from fewer
MatMuls, and only where it is safe: constant weights of one depth, used nowhere else."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeport.export.packing import pack_sibling_matmuls


def _graph():
    """x -> q, k, v projections (packable); x -> a MatMul whose weight another MatMul shares
    (not packable); y (another activation) -> one MatMul (alone)."""
    rng = np.random.default_rng(0)
    weights = {name: rng.normal(size=(8, width)).astype(np.float32)
               for name, width in (("wq", 8), ("wk", 4), ("wv", 4), ("shared", 6))}
    nodes = [helper.make_node("MatMul", ["x", w], [f"{w}_out"], name=f"mm_{w}") for w in ("wq", "wk", "wv", "shared")]
    nodes.append(helper.make_node("MatMul", ["y", "shared"], ["shared_again"], name="mm_shared_y"))
    outputs = [f"{w}_out" for w in ("wq", "wk", "wv", "shared")] + ["shared_again"]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["rows", 8]) for n in ("x", "y")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["rows", None]) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_siblings_are_packed_into_one_matmul_with_the_same_values():
    model = _graph()
    feeds = {"x": np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32),
             "y": np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32)}
    before = _run(model, feeds)
    assert pack_sibling_matmuls(model) == 2                       # q, k, v -> one
    onnx.checker.check_model(model, full_check=True)
    kinds = [n.op_type for n in model.graph.node]
    assert kinds.count("MatMul") == 3 and kinds.count("Split") == 1
    packed = next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[0] == "x" and "packed" in n.input[1])
    assert numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == packed.input[1])).shape == (8, 16)
    for expected, got in zip(before, _run(model, feeds)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert pack_sibling_matmuls(model) == 0                       # nothing left to pack


def _siblings(names=("", ""), weight_as_output=False, weight_as_input=False, opset=18):
    """x -> two projections whose MatMuls are named ``names``; optionally the first weight is
    also a graph output or a graph input (as old exporters list initializers)."""
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), f"w{i}") for i in range(2)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=names[i]) for i in range(2)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 8])]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["rows", 4]) for i in range(2)]
    if weight_as_output:
        outputs.append(helper.make_tensor_value_info("w0", TensorProto.FLOAT, [8, 4]))
    if weight_as_input:
        inputs.append(helper.make_tensor_value_info("w0", TensorProto.FLOAT, [8, 4]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unnamed_siblings_pack_into_a_model_onnx_runtime_loads():
    model = _siblings()
    feeds = {"x": np.ones((2, 8), np.float32)}
    before = _run(model, feeds)
    assert pack_sibling_matmuls(model) == 1
    onnx.checker.check_model(model, full_check=True)
    for expected, got in zip(before, _run(model, feeds)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_weights_the_graph_shows_or_old_opsets_are_left_alone():
    for model in (_siblings(weight_as_output=True), _siblings(weight_as_input=True), _siblings(opset=11)):
        original = model.SerializeToString()
        assert pack_sibling_matmuls(model) == 0 and model.SerializeToString() == original
