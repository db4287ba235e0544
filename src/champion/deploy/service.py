"""What every protocol of `champion serve` shares: the served model, readiness, limits, metrics, the batcher.

HTTP (`app`) and gRPC (`grpc_service`) are two doors to one `Service`: a request is checked against
the one served model (swapped by a reload), prepared off the event loop, run in the one batcher and
counted in the one set of metrics, whichever door it came through. `Service.serving` is the span in
which it is ready: the batcher and the alias follower run, and on the way out every other door is
drained before the batcher stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import numpy as np

from champion.deploy.batching import Batcher
from champion.deploy.limits import Limits
from champion.deploy.metrics import Metrics
from champion.deploy.model import IMAGE_INPUT, ServedModel
from champion.deploy.oip import InferRequest, OIPError
from champion.deploy.prepare import check_outputs, prepare
from champion.deploy.reload import AliasFollower

SERVER_NAME = "champion"
EXTENSIONS = ["binary_tensor_data", "classification"]

# A request body up to this size is parsed on the event loop: that takes well under a millisecond, less
# than the hop to a worker thread, which under load also queues behind other hops. Larger bodies, and
# image files whatever their size (decoding is CPU work), go to a worker thread.
INLINE_BYTES = 64 * 1024

T = TypeVar("T")
Prepared = tuple[InferRequest, dict[str, np.ndarray], int]  # the parsed request, the model's feed, its items


class Service:
    """The served model and readiness (`state`), limits, metrics and the batcher, for every protocol."""

    def __init__(self, model: ServedModel, limits: Limits):
        self.limits = limits
        self.metrics = Metrics()
        # "model" is swapped by a reload; handlers read it once per request.
        self.state: dict[str, Any] = {"model": model, "ready": False}
        self.batcher = Batcher(limits, self.metrics)
        # Other doors (the gRPC server): drained when serving ends, before the batcher stops.
        self.on_stop: list[Callable[[], Awaitable[None]]] = []

    @property
    def ready(self) -> bool:
        return self.state["ready"]

    def find(self, name: str, version: str | None) -> ServedModel:
        """The served model, if `name` is its name (and `version`, when given, its version); else 404."""
        m = self.state["model"]
        if name != m.name:
            raise OIPError(f"unknown model {name!r}: this server serves {m.name!r}", 404)
        if version not in (None, "", m.version):
            raise OIPError(f"model {name!r} has no version {version!r}: this server serves version {m.version}", 404)
        return m

    async def infer(
        self, name: str, version: str | None, prepare: Callable[[ServedModel], Awaitable[Prepared]]
    ) -> tuple[ServedModel, InferRequest, list[np.ndarray]]:
        """Run one inference request: 503 while not ready, the model found, `prepare(model)` (reading,
        parsing, the feed) awaited as "arriving" so that the batcher waits for it, then batched."""
        if not self.ready:
            raise OIPError("the server is not ready (starting or shutting down)", 503)
        m = self.find(name, version)
        self.batcher.arriving += 1
        try:
            req, feed, rows = await prepare(m)
        finally:
            self.batcher.arriving -= 1  # and queued below with no await in between: never missed
        return m, req, await self.batcher.run(m, feed, rows)

    async def measured(self, work: Awaitable[T]) -> T:
        """`work`'s result, counted and timed in the metrics. Its failures are OIPErrors, counted under
        their status (an unexpected exception becomes a 500), and raised for the door to answer."""
        started = time.perf_counter()
        label = self.state["model"].name
        self.metrics.requests.labels(label).inc()
        try:
            result = await work
        except OIPError as exc:
            self.metrics.errors.labels(label, str(exc.status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)
            raise
        except Exception as exc:  # noqa: BLE001 - answered as the protocol's error, the server stays up
            self.metrics.errors.labels(label, "500").inc()
            raise OIPError(f"inference failed: {type(exc).__name__}: {exc}", 500) from exc
        self.metrics.latency.labels(label).observe(time.perf_counter() - started)
        return result

    async def prepare(self, size: int, parse: Callable[[int, int, int], InferRequest], m: ServedModel) -> Prepared:
        """The request `parse` reads (`size` bytes of it), checked against `m` and made `m`'s feed.

        `parse(max_elements, max_items, max_values)` is the door's parser (`oip.parse_request` or
        `grpc_service.parse_request` with the message bound); the bounds come from the limits and `m`.
        """
        limits = self.limits
        bounded = functools.partial(parse, limits.max_elements, limits.max_batch_size, m.max_json_values(limits.max_batch_size, limits.max_elements))
        if size > INLINE_BYTES:
            return await self.off_loop(_parse_and_prepare, bounded, m, limits)
        req = bounded()
        check_outputs(m, req)
        if IMAGE_INPUT in req.inputs:
            feed, rows = await self.off_loop(prepare, m, req, self.limits)
        else:
            feed, rows = prepare(m, req, self.limits)
        return req, feed, rows

    @staticmethod
    async def off_loop(fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker thread. Parsing a large request and decoding images are CPU work: off
        the event loop, in one hop, so that health checks, metrics and other requests keep answering."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    @contextlib.asynccontextmanager
    async def serving(self, follower: AliasFollower, reload_seconds: float | None, sighup: bool) -> AsyncIterator[None]:
        """Ready while the batcher and the follower run; not ready, the other doors drained and in-flight
        batches finished, after."""
        self.batcher.start()
        follower.start(reload_seconds, sighup)
        self.state["ready"] = True
        try:
            yield
        finally:
            self.state["ready"] = False
            for stop in self.on_stop:
                await stop()
            follower.stop()
            await self.batcher.stop()


def _parse_and_prepare(parse: Callable[[], InferRequest], m: ServedModel, limits: Limits) -> Prepared:
    req = parse()
    check_outputs(m, req)
    feed, rows = prepare(m, req, limits)
    return req, feed, rows
