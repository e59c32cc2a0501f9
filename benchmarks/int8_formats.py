"""The evidence behind the x86 INT8 formats (edgeport/quantize/targets.py): ONNX Runtime's
MatMulInteger at all-MiniLM-L6-v2's GEMM shapes (sequence 128), weights constant as in a
quantized model, for each format a preset could pick:

    u8 x s8           the stock preset: 8-bit activations, full-range signed weights
    u8 x s8, 7-bit    the same kernel with weights in [-64, 63] (reduce_range)
    u8 x u8           unsigned weights (zero point 128)
    s8 x s8           signed activations

For each: the speed (GOP/s) and the largest error against the exact integer product, on
full-range random operands, the worst case for a kernel whose 16-bit intermediate sums
saturate (x86 without VNNI multiplies u8 x s8 pairs into int16 with vpmaddubsw).

    python benchmarks/int8_formats.py [--threads 1,2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, ort_session  # noqa: E402

SHAPES = {"QKV / output projection": (128, 384, 384), "feed-forward up": (128, 384, 1536),
          "feed-forward down": (128, 1536, 384)}
# name -> (activation dtype, weight dtype, weight low, weight high (exclusive), weight zero point)
FORMATS = {"u8 x s8": (np.uint8, np.int8, -127, 128, 0),
           "u8 x s8, 7-bit (reduce_range)": (np.uint8, np.int8, -64, 64, 0),
           "u8 x u8": (np.uint8, np.uint8, 0, 256, 128),
           "s8 x s8": (np.int8, np.int8, -127, 128, 0)}


def _model(activations, weights: np.ndarray, weight_zero: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    types = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}
    rows, depth = 128, weights.shape[0]
    inputs = ["a", "w", "", "w_zero"] if weight_zero else ["a", "w"]
    initializers = [numpy_helper.from_array(weights, "w")]
    if weight_zero:
        initializers.append(numpy_helper.from_array(np.array(weight_zero, weights.dtype), "w_zero"))
    graph = helper.make_graph([helper.make_node("MatMulInteger", inputs, ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", types[activations], [rows, depth])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, weights.shape[1]])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def _session(shape, fmt, threads: int, rng, path: Path):
    """A session multiplying by constant weights of ``fmt``, its input and the largest error of
    its product against the exact one."""
    activations, weight_type, low, high, weight_zero = FORMATS[fmt]
    rows, depth, width = shape
    weights = rng.integers(low, high, (depth, width)).astype(weight_type)
    a_low, a_high = (0, 256) if activations is np.uint8 else (-127, 128)
    a = rng.integers(a_low, a_high, (rows, depth)).astype(activations)
    path.write_bytes(_model(activations, weights, weight_zero))
    session = ort_session(path, threads)
    exact = a.astype(np.int64) @ (weights.astype(np.int64) - weight_zero)
    return session, {"a": a}, int(np.abs(session.run(None, {"a": a})[0] - exact).max())


def _compare(shape, threads: int, rounds: int, rng, work: Path) -> dict[str, tuple[float, float, int]]:
    """Every format at ``shape``, timed in interleaved rounds: format -> (GOP/s, speed against
    u8 x s8 as the median of per-round ratios, error)."""
    made = {fmt: _session(shape, fmt, threads, rng, work / f"{index}.onnx") for index, fmt in enumerate(FORMATS)}
    calls = {fmt: (lambda session=session, feeds=feeds: session.run(None, feeds))
             for fmt, (session, feeds, _) in made.items()}
    medians = interleaved(calls, rounds=rounds, calls=30, pause=0.05)
    ops = 2 * shape[0] * shape[1] * shape[2]
    base = np.array(medians["u8 x s8"])
    return {fmt: (ops / (float(np.median(times)) / 1000) / 1e9, float(np.median(base / np.array(times))),
                  made[fmt][2]) for fmt, times in medians.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from edgeport.speed import machine_info

    info = machine_info()
    print(f"MatMulInteger on {info['cpu']} ({info['available_cpus']} CPUs; {', '.join(info['instruction_sets'])}), "
          f"spinning off, {args.rounds} interleaved rounds: GOP/s (median of round medians), speed against u8 x s8 "
          "(median of per-round ratios) and the largest error against the exact product, full-range operands")
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="int8-formats-"))
    for threads in (int(t) for t in args.threads.split(",")):
        print(f"\n{threads} thread(s)")
        print("format | " + " | ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in SHAPES.items()))
        results = [_compare(shape, threads, args.rounds, rng, work) for shape in SHAPES.values()]
        for fmt in FORMATS:
            cells = [f"{r[fmt][0]:.0f} GOP/s = {r[fmt][1]:.2f}x, error {r[fmt][2]}" for r in results]
            print(f"{fmt} | " + " | ".join(cells))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
