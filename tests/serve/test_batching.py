"""The dynamic batcher on its own: requests that queue while a batch runs form the next
batch (the load batching exists for), shapes never mix, and max_batch holds."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from edgeport.serve.batching import DynamicBatcher


def _slow_identity(seconds: float, seen: list[int]):
    def run(feeds: dict) -> dict:
        seen.append(len(feeds["x"]))
        time.sleep(seconds)
        return {"y": feeds["x"] * 2}
    return run


async def _submit_all(batcher: DynamicBatcher, rows: list[np.ndarray], spacing: float = 0.0) -> list[dict]:
    tasks = []
    for value in rows:
        tasks.append(asyncio.create_task(batcher.submit({"x": value})))
        await asyncio.sleep(spacing)
    return await asyncio.gather(*tasks)


def test_requests_queued_during_a_batch_form_the_next_batch():
    seen: list[int] = []

    async def scenario():
        batcher = DynamicBatcher(_slow_identity(0.05, seen), max_batch=32, max_delay=0.001, max_queue=256)
        await batcher.start()
        # One request starts a batch; 20 more arrive while it runs (long after its deadline).
        first = asyncio.create_task(batcher.submit({"x": np.full((1, 4), -1.0)}))
        await asyncio.sleep(0.01)
        rest = await _submit_all(batcher, [np.full((1, 4), float(i)) for i in range(20)])
        await first
        await batcher.stop()
        return rest

    results = asyncio.run(scenario())
    assert seen[0] == 1 and seen[1] == 20, seen                       # all 20 ran together
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 4), 2.0 * i))   # each got its own rows back


def test_shapes_never_mix_and_max_batch_holds():
    seen: list[int] = []

    async def scenario():
        batcher = DynamicBatcher(_slow_identity(0.02, seen), max_batch=4, max_delay=0.001, max_queue=256)
        await batcher.start()
        blocker = asyncio.create_task(batcher.submit({"x": np.zeros((1, 3))}))
        await asyncio.sleep(0.005)
        short = [np.full((1, 3), float(i)) for i in range(6)]
        long = [np.full((1, 5), float(i)) for i in range(3)]
        results = await _submit_all(batcher, short + long)
        await blocker
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert max(seen) <= 4 and sum(seen) == 10, seen
    assert [r["y"].shape for r in results] == [(1, 3)] * 6 + [(1, 5)] * 3
