"""``edgeport bench`` for causal LMs: time to first token, prefill and decode tokens per
second, inter-token latency, per variant, on the same real prompts, interleaved by round;
the transformers baseline (handed in by the CLI) streams through the same loop.

A streamer is anything with ``stream_ids(prompt_ids, max_new_tokens)`` yielding one token
id at a time; the bench stamps the time of each, so no engine times itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np

from ..speed import Interrupted, Monitor
from .stats import latency_stats


class Streamer(Protocol):
    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[int]: ...


@dataclass
class Timing:
    prompt_tokens: int
    ttft: float              # seconds from the request to the first new token (prefill + one step)
    gaps: list[float]        # seconds between consecutive new tokens (decode)
    total: float

    @property
    def new_tokens(self) -> int:
        return len(self.gaps) + 1


def time_request(streamer: Streamer, prompt_ids: list[int], max_new_tokens: int) -> Timing:
    start = time.perf_counter()
    stamps = []
    for _ in streamer.stream_ids(prompt_ids, max_new_tokens):
        stamps.append(time.perf_counter())
    if not stamps:
        stamps.append(time.perf_counter())
    return Timing(len(prompt_ids), stamps[0] - start, list(np.diff(stamps)), stamps[-1] - start)


def interleaved_generation(streamers: dict[str, Streamer], prompts: list[list[int]], max_new_tokens: int,
                           rounds: int, warmup: int = 1, tick: Callable[[str], None] = lambda name: None,
                           monitor: Monitor | None = None, machine: list | None = None) -> dict[str, list[Timing]]:
    """Timings per variant, the variants taking turns by round (the order reversed every
    round); the machine's state around each round is appended to ``machine``."""
    monitor = monitor or Monitor()
    timings: dict[str, list[Timing]] = {name: [] for name in streamers}
    try:
        for streamer in streamers.values():
            for prompt in prompts[:warmup]:
                time_request(streamer, prompt, max_new_tokens)
        for round_index in range(rounds):
            names = list(streamers) if round_index % 2 == 0 else list(reversed(streamers))
            before = monitor.sample()
            for name in names:
                for prompt in prompts:
                    timings[name].append(time_request(streamers[name], prompt, max_new_tokens))
                tick(name)
            if machine is not None:
                machine.append(monitor.between(before, monitor.sample()))
    except KeyboardInterrupt:
        raise Interrupted({}) from None
    return timings


def summarize(name: str, timings: list[Timing], max_new_tokens: int, prompts: int) -> dict:
    """One report row: request latency, TTFT, inter-token latency and token rates."""
    ttft = latency_stats([t.ttft for t in timings])
    gaps = [g for t in timings for g in t.gaps]
    prefill_tokens = sum(t.prompt_tokens for t in timings)
    decode_tokens = sum(len(t.gaps) for t in timings)
    row = {"variant": name, "scenario": "generation",
           "params": {"prompts": prompts, "max_new_tokens": max_new_tokens},
           "latency": latency_stats([t.total for t in timings]).to_dict(),
           "throughput_per_s": sum(t.new_tokens for t in timings) / sum(t.total for t in timings),
           "ttft_ms": ttft.to_dict(),
           "prefill_tokens_per_s": prefill_tokens / sum(t.ttft for t in timings),
           "decode_tokens_per_s": decode_tokens / sum(sum(t.gaps) for t in timings) if decode_tokens else None,
           "mean_new_tokens": float(np.mean([t.new_tokens for t in timings]))}
    if gaps:
        row["itl_ms"] = latency_stats(gaps).to_dict()
    return row
