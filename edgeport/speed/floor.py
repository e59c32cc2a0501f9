"""The speed of light: how fast this machine multiplies matrices (FP32 MatMul and INT8
MatMulInteger, u8 x s8, through ONNX Runtime), how much matrix work a graph does per token
(its weight GEMMs: 2 x K x N operations per row), and from the two the time a variant could
not beat.  A variant's fraction of its floor says how much is left to gain, and where: at
MiniLM's shapes the INT8 GEMMs run near this peak, so an INT8 model far from its floor
spends its time around them (quantizing activations, attention in FP32, normalisations).

Attention's activation-by-activation products are not counted (they depend on the length
squared, and dynamic INT8 keeps them in FP32): the floor is a lower bound on purpose."""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np

GEMM_SIZE = 1024
# Attention and QAttention (ONNX Runtime's fused forms) hold the QKV projection's weight as input 1.
WEIGHT_OPS = ("MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul",
              "MatMulNBits", "Attention", "QAttention")


@lru_cache(maxsize=4)
def gemm_peaks(threads: int, seconds: float = 1.5) -> dict[str, float]:
    """Operations per second of a GEMM_SIZE-cubed FP32 MatMul and INT8 MatMulInteger here."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    size = GEMM_SIZE

    def model(op, a_type, b_type, out_type):
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "gemm",
                                  [helper.make_tensor_value_info("a", a_type, [size, size]),
                                   helper.make_tensor_value_info("b", b_type, [size, size])],
                                  [helper.make_tensor_value_info("y", out_type, [size, size])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()

    rng = np.random.default_rng(0)
    cases = {"fp32": (model("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT),
                      {"a": rng.standard_normal((size, size), np.float32),
                       "b": rng.standard_normal((size, size), np.float32)}),
             "int8": (model("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32),
                      {"a": rng.integers(0, 255, (size, size), dtype=np.uint8),
                       "b": rng.integers(-127, 127, (size, size), dtype=np.int8)})}
    peaks = {}
    for name, (proto, feeds) in cases.items():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or len(times) < 3:
            begin = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - begin)
        peaks[name] = 2 * size ** 3 / float(np.median(times))
    return peaks


def weight_ops_per_row(model_path: Path) -> float:
    """2 x K x N summed over the graph's products with a constant 2-D weight: the matrix work
    one row (one token) costs."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    shapes = {}
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    for node in model.graph.node:            # weights folded into Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
    for node in model.graph.node:            # QDQ graphs: the weight is a dequantized initializer
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]
    total = 0.0
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        dims = shapes.get(node.input[1 if node.op_type != "QLinearMatMul" else 3])
        if node.op_type == "MatMulNBits":
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            total += 2.0 * attributes.get("K", 0) * attributes.get("N", 0)
        elif dims is not None and len(dims) == 2:
            total += 2.0 * dims[0] * dims[1]
    return total


def floor_record(ops_per_row: float, rows: int, precision: str, measured_ms: float, peaks: dict[str, float]) -> dict:
    """The variant's floor at ``rows`` rows (tokens) and the fraction of it its median reached."""
    kind = "int8" if precision.startswith("int8") else "fp32"
    floor_ms = ops_per_row * rows / peaks[kind] * 1000
    def figure(value: float) -> float:              # four significant digits: tiny models have tiny floors
        return float(f"{value:.4g}")

    return {"peak": kind, "peak_gops": figure(peaks[kind] / 1e9), "gemm_gops_per_call": figure(ops_per_row * rows / 1e9),
            "floor_ms": figure(floor_ms), "fraction": figure(floor_ms / measured_ms) if measured_ms else None}
