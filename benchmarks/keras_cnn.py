"""The issue's CIFAR-style Keras CNN (trained for a few seconds on scikit-learn's digits,
upscaled to 32x32x3) side by side: Keras 3 on its torch backend, the ONNX export on ONNX
Runtime FP32, and its INT8 static quantization; latency at batch 1 and batch 64, and
accuracy on the 397 held-out digits for each.

    python benchmarks/keras_cnn.py [--rounds 5] [--json results.json]

Keras is timed through ``model(x, training=False)`` under ``torch.no_grad()``, its fastest
inference path (``predict`` adds a data pipeline per call); all three variants are timed in
one process, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ["KERAS_BACKEND"] = "torch"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from common import interleaved, ort_session, print_table, summarize  # noqa: E402


def edgeport(*args) -> None:
    subprocess.run([sys.executable, "-m", "edgeport", *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()

    import keras
    import torch

    import keras_models
    from edgeport.speed import machine_info

    with tempfile.TemporaryDirectory() as tmp:
        work = keras_models.build("cnn", Path(tmp))
        edgeport("export", "onnx", work / "cnn.keras", "-o", work / "fp32")
        edgeport("quantize", work / "fp32", "-o", work / "int8", "--mode", "int8-static", "--calib",
                 work / "calib.npz")
        model = keras.saving.load_model(work / "cnn.keras")
        with np.load(work / "eval.npz") as data:
            images = data["images"].astype(np.float32) / 255.0
        labels = np.load(work / "labels.npy")
        sessions = {"ORT FP32": ort_session(work / "fp32" / "model.onnx"),
                    "ORT INT8 static": ort_session(work / "int8" / "model.onnx")}

        def keras_logits(x):
            with torch.no_grad():
                return keras.ops.convert_to_numpy(model(x, training=False))

        runs = {"Keras (torch backend)": keras_logits,
                **{name: (lambda x, s=session: s.run(["logits"], {"images": x})[0]) for name, session in sessions.items()}}
        accuracy = {name: float((np.concatenate([run(images[i:i + 64]) for i in range(0, len(images), 64)]).argmax(1)
                                 == labels).mean()) for name, run in runs.items()}
        reference = keras_logits(images)
        agreement = {name: float((run(images).argmax(1) == reference.argmax(1)).mean()) for name, run in runs.items()}
        results = {}
        for batch in (1, 64):
            x = np.ascontiguousarray(images[:batch])
            medians = interleaved({name: (lambda run=run: run(x)) for name, run in runs.items()},
                                  rounds=args.rounds, calls=40 if batch == 1 else 10)
            rows = summarize(medians, "Keras (torch backend)")
            for row in rows:
                row["accuracy"] = accuracy[row["variant"]]
                row["top1_vs_keras"] = agreement[row["variant"]]
            results[f"batch {batch}"] = rows
    machine = machine_info()
    print(f"\nKeras CNN (digits 32x32x3) on {machine['cpu']} ({machine['cores']} cores); accuracy on 397 held-out "
          "digits; speed-up against Keras in the same rounds")
    for title, rows in results.items():
        print(f"\n{title}")
        print_table(rows, ["accuracy", "top1_vs_keras"])
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
