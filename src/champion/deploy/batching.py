"""Dynamic batching for `champion serve`: requests that arrive together run as one ONNX Runtime batch.

Requests that arrive within `max_delay_ms` of each other run as one batch of at most
`max_batch_size` items; a batch waits only while other requests are being received or prepared
(`Batcher.arriving`), so a lone request runs at once. One thread runs the session, so the next batch
forms while one runs. Each caller gets its own rows back, or the exception its batch raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from champion.deploy.limits import Limits
from champion.deploy.metrics import Metrics
from champion.deploy.model import ServedModel


@dataclass
class _Pending:
    feed: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    model: ServedModel  # the one the request was prepared for: a reload must not answer it from another
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Runs queued requests as one ONNX Runtime batch: each caller gets its own rows back."""

    def __init__(self, limits: Limits, metrics: Metrics):
        self.limits = limits
        self.metrics = metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.carry: _Pending | None = None
        self.arriving = 0  # requests being read, parsed or prepared: the only ones worth waiting for
        # One thread runs the session: batches form while the previous one runs.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="champion-ort")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def run(self, model: ServedModel, feed: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
        """The model's outputs for this feed's `rows` items, once the batch they joined has run."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(feed, rows, future, model))
        return await future

    async def _next(self, timeout: float | None) -> _Pending | None:
        if self.carry is not None:
            item, self.carry = self.carry, None
            return item
        if timeout is None:
            return await self.queue.get()
        if timeout <= 0:
            return self.queue.get_nowait() if not self.queue.empty() else None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _work(self) -> None:
        while True:
            batch, rows = await self._gather(await self._next(None))
            batch = [p for p in batch if not p.future.cancelled()]  # callers that went away
            if batch:
                await self._run(batch, rows)

    async def _gather(self, first: _Pending) -> tuple[list[_Pending], int]:
        """`first` and the requests that join it (same model, within the delay and the batch size), and their rows."""
        loop = asyncio.get_running_loop()
        batch, rows, model = [first], first.rows, first.model
        if not model.batched:
            return batch, rows
        deadline = loop.time() + self.limits.max_delay_ms / 1000
        while rows < self.limits.max_batch_size:
            if self.carry is None and self.queue.empty() and not self.arriving:
                break  # nobody else is on the way: waiting would only add latency
            item = await self._next(deadline - loop.time())
            if item is None:
                break
            if rows + item.rows > self.limits.max_batch_size or item.model is not model:
                self.carry = item  # first in the next batch (one model per batch, across a reload)
                break
            batch.append(item)
            rows += item.rows
        return batch, rows

    async def _run(self, batch: list[_Pending], rows: int) -> None:
        """One session run for the batch; each caller's future gets its rows, or the failure.

        `rows` is what was gathered, callers that went away included: the batch-size metric counts those.
        """
        loop = asyncio.get_running_loop()
        model = batch[0].model
        try:  # nothing may escape: a dead batcher would leave every later request hanging
            feed = {k: np.concatenate([p.feed[k] for p in batch]) for k in batch[0].feed} if len(batch) > 1 else batch[0].feed
            results = await loop.run_in_executor(self.executor, model.session.run, None, feed)
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the failure
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self.metrics.batch_size.observe(rows)
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result([r[start : start + p.rows] for r in results] if model.batched else results)
            start += p.rows

