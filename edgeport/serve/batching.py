"""Dynamic batching: concurrent requests of the same shape are run as one batch, up to
``max_batch`` rows or ``max_delay`` seconds after the first arrived; the queue is bounded,
and a full queue is refused at once (503) rather than letting latency grow without limit.
With ``max_batch`` 1 every request runs alone."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class QueueFull(Exception):
    pass


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def signature(self) -> tuple:
        return tuple((name, value.dtype.str, value.shape[1:]) for name, value in sorted(self.feeds.items()))


class DynamicBatcher:
    def __init__(self, run: Callable[[dict], dict], max_batch: int, max_delay: float, max_queue: int,
                 on_batch: Callable[[int, int, float], None] = lambda requests, rows, seconds: None, workers: int = 1):
        self.run = run
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Pending] | None = None
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgeport-infer")
        self._task: asyncio.Task | None = None
        self._waiting: list[_Pending] = []

    @property
    def depth(self) -> int:
        return (self.queue.qsize() if self.queue else 0) + len(self._waiting)

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish every accepted request, then stop."""
        while self.depth:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, feeds: dict[str, np.ndarray], admitted: bool = False) -> dict[str, np.ndarray]:
        """``admitted``: a later part of a request already let in, which the queue bound does not refuse."""
        if not admitted and self.depth >= self.max_queue:
            raise QueueFull(f"the queue holds {self.max_queue} requests already")
        rows = len(next(iter(feeds.values())))
        pending = _Pending(feeds, rows, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(pending)
        return await pending.future

    async def _next(self, timeout: float | None) -> _Pending | None:
        try:
            if timeout is None:
                return await self.queue.get()
            return await asyncio.wait_for(self.queue.get(), timeout=max(timeout, 0))
        except asyncio.TimeoutError:
            return None

    async def _loop(self) -> None:
        while True:
            first = self._waiting.pop(0) if self._waiting else await self._next(None)
            batch, rows = [first], first.rows
            deadline = first.arrived + self.max_delay
            while rows < self.max_batch:
                candidate = self._take_waiting(first.signature, self.max_batch - rows)
                if candidate is None:
                    remaining = deadline - time.perf_counter()
                    # Past the deadline, take what is already queued without waiting: under
                    # load that is what arrived while the previous batch ran, the very
                    # requests batching is for.
                    candidate = await self._next(remaining) if remaining > 0 else self._queued()
                    if candidate is None:
                        break
                    if candidate.signature != first.signature or rows + candidate.rows > self.max_batch:
                        self._waiting.append(candidate)
                        continue
                batch.append(candidate)
                rows += candidate.rows
            await self._execute(batch, rows)

    def _queued(self) -> _Pending | None:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def _take_waiting(self, signature: tuple, room: int) -> _Pending | None:
        for index, pending in enumerate(self._waiting):
            if pending.signature == signature and pending.rows <= room:
                return self._waiting.pop(index)
        return None

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        feeds = {name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}
        start = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, feeds)
        except Exception as exc:  # handed to every request of the batch, which answers for it
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        self.on_batch(len(batch), rows, time.perf_counter() - start)
        offset = 0
        for pending in batch:
            part = {name: value[offset:offset + pending.rows] for name, value in outputs.items()}
            offset += pending.rows
            if not pending.future.done():
                pending.future.set_result(part)
