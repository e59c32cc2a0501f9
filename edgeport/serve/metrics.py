"""Prometheus metrics in the text exposition format: request counts by endpoint and status,
request and inference latency histograms, batch sizes, queue depth.  Kept per server (no
process-wide registry)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        prefix = f"{labels}," if labels else ""
        out = [f'{name}_bucket{{{prefix}le="{bound}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{prefix}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.total}", f"{name}_count{suffix} {self.count}"]
        return out


class Metrics:
    def __init__(self, model: str, replica: str | None = None):
        self.model = model
        self.replica = replica          # one of several replicas (Ray Serve): its series are its own
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS)
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.batch_requests = Histogram(BATCH_BUCKETS)
        self.queue_depth = lambda: 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1
            self.latency.observe(seconds)

    def batch(self, requests: int, rows: int, seconds: float) -> None:
        with self.lock:
            self.batch_requests.observe(requests)
            self.batch_rows.observe(rows)
            self.inference.observe(seconds)

    def exposition(self) -> str:
        model = f'model="{self.model}"' + (f',replica="{self.replica}"' if self.replica else "")
        with self.lock:
            lines = ["# HELP edgeport_requests_total Requests by endpoint and HTTP status.",
                     "# TYPE edgeport_requests_total counter"]
            lines += [f'edgeport_requests_total{{{model},endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            for name, histogram, text in (
                    ("edgeport_request_duration_seconds", self.latency, "Time from request to response."),
                    ("edgeport_inference_duration_seconds", self.inference, "Time the model took per batch."),
                    ("edgeport_batch_requests", self.batch_requests, "Requests per executed batch."),
                    ("edgeport_batch_rows", self.batch_rows, "Rows per executed batch.")):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"] + histogram.lines(name, model)
            lines += ["# HELP edgeport_queue_depth Requests waiting for a batch.", "# TYPE edgeport_queue_depth gauge",
                      f"edgeport_queue_depth{{{model}}} {self.queue_depth()}"]
        return "\n".join(lines) + "\n"
