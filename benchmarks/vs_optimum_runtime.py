"""End to end (text in, normalised embedding out) on the same model.onnx: edgeport's runtime
against Optimum's ORTModelForFeatureExtraction, which needs transformers < 4.58 and so
lives in its own virtual environment.  Each round runs one process per tool, alternating,
and the ratio is taken per round.

    python benchmarks/vs_optimum_runtime.py ARTIFACT --optimum-python /path/to/venv/bin/python [--rounds 4]

The Optimum side needs its own environment (Optimum pins transformers below 5), made with
this project's ``optimum-bench`` extra:

    python3 -m venv /tmp/optimum-venv
    /tmp/optimum-venv/bin/pip install torch==2.13.0 -e ".[optimum-bench]"
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

EDGEPORT = r"""
import json, sys, time, statistics
from edgeport.runtime import load
from edgeport.data import stdlib_sentences
model = load(sys.argv[1])   # default session settings, as Optimum uses its defaults
texts = stdlib_sentences(32)
out = {}
for batch in (1, 32):
    chunk = texts[:batch]
    for _ in range(3): model.predict(chunk)
    times = []
    for _ in range(40 if batch == 1 else 8):
        t = time.perf_counter(); model.predict(chunk); times.append(time.perf_counter() - t)
    out[batch] = statistics.median(times) * 1000
print(json.dumps(out))
"""

OPTIMUM = r"""
import json, sys, time, statistics
import numpy as np, torch
from optimum.onnxruntime import ORTModelForFeatureExtraction
from transformers import AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
model = ORTModelForFeatureExtraction.from_pretrained(folder, file_name="model.onnx")
tokenizer = AutoTokenizer.from_pretrained(folder)
def embed(chunk):
    enc = tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
out = {}
for batch in (1, 32):
    chunk = texts[:batch]
    for _ in range(3): embed(chunk)
    times = []
    for _ in range(40 if batch == 1 else 8):
        t = time.perf_counter(); embed(chunk); times.append(time.perf_counter() - t)
    out[batch] = statistics.median(times) * 1000
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("--optimum-python", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    from edgeport.data import stdlib_sentences

    texts = json.dumps(stdlib_sentences(32))
    rows = {"edgeport": [], "optimum": []}
    for round_index in range(args.rounds):
        order = ["edgeport", "optimum"] if round_index % 2 == 0 else ["optimum", "edgeport"]
        for tool in order:
            command = [sys.executable, "-c", EDGEPORT, args.artifact] if tool == "edgeport" else \
                [args.optimum_python, "-c", OPTIMUM, args.artifact, texts]
            proc = subprocess.run(command, capture_output=True, text=True, check=True,
                                  env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
            rows[tool].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for batch in ("1", "32"):
        edge = [r[batch] for r in rows["edgeport"]]
        opt = [r[batch] for r in rows["optimum"]]
        ratio = statistics.median(o / e for o, e in zip(opt, edge))
        print(f"batch {batch:>2}: edgeport {statistics.median(edge):.2f} ms, Optimum ORTModel "
              f"{statistics.median(opt):.2f} ms; edgeport is x{ratio:.2f} faster (median of per-round ratios)")


if __name__ == "__main__":
    main()
