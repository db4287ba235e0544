"""The Starlette application of `champion serve`: the Open Inference Protocol's routes and handlers.

Server and model metadata, liveness and readiness, inference (`/v2/models/<name>[/versions/<v>]/infer`)
and Prometheus metrics at /metrics. Every error is answered as the protocol's `{"error": message}`
JSON. The app's lifespan starts the batcher and the alias follower, and is what makes it ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from champion import __version__
from champion.deploy import oip
from champion.deploy.batching import Batcher
from champion.deploy.limits import Limits
from champion.deploy.metrics import Metrics
from champion.deploy.model import ServedModel
from champion.deploy.oip import OIPError
from champion.deploy.prepare import check_outputs, prepare, respond
from champion.deploy.reload import AliasFollower

SERVER_NAME = "champion"
EXTENSIONS = ["binary_tensor_data", "classification"]
OVERSIZED_DRAIN = 64 * 1024**2  # bytes of an oversized body read and dropped so the client gets the 413


def build_app(
    model: ServedModel,
    limits: Limits | None = None,
    alias: str | None = None,
    reload_seconds: float | None = None,
    quiet: bool = True,
    sighup: bool = False,
) -> Starlette:
    """The Starlette app serving `model` (the batcher starts with the app's lifespan).

    `alias`: the alias `model` was loaded by (None for a pinned version). With `reload_seconds` the
    registry is asked that often which version `alias` names, and with `sighup` whenever the process
    gets SIGHUP; when it has moved, that version is loaded and verified beside the served one and
    takes over from the next batch (requests in flight finish on the old one). One that fails to load
    (a hash mismatch, say) is reported and the old one kept.
    """
    handlers = Handlers(model, limits or Limits())
    follower = AliasFollower(handlers.state, alias, quiet)
    lifespan = _lifespan(handlers, follower, reload_seconds, sighup)
    app = Starlette(routes=_routes(handlers), lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.champion = handlers.state
    return app


class Handlers:
    """The request handlers, and what they share: the served model, readiness, limits, metrics, batcher."""

    def __init__(self, model: ServedModel, limits: Limits):
        self.limits = limits
        self.metrics = Metrics()
        # "model" is swapped by a reload; handlers read it once per request.
        self.state: dict[str, Any] = {"model": model, "ready": False}
        self.batcher = Batcher(limits, self.metrics)

    def find(self, request: Request) -> ServedModel:
        """The served model, if the path names it (and its version, when it names one)."""
        m = self.state["model"]
        name, version = request.path_params["model"], request.path_params.get("version")
        if name != m.name:
            raise OIPError(f"unknown model {name!r}: this server serves {m.name!r}", 404)
        if version not in (None, "", m.version):
            raise OIPError(f"model {name!r} has no version {version!r}: this server serves version {m.version}", 404)
        return m

    async def server_metadata(self, request: Request) -> Response:
        return _answer({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return _answer({"live": True})

    async def ready(self, request: Request) -> Response:
        return _answer({"ready": self.state["ready"]}, 200 if self.state["ready"] else 503)

    async def model_metadata(self, request: Request) -> Response:
        try:
            return _answer(self.find(request).metadata())
        except OIPError as exc:
            return _error(str(exc), exc.status)

    async def model_ready(self, request: Request) -> Response:
        try:
            self.find(request)
        except OIPError as exc:
            return _error(str(exc), exc.status)
        return _answer({"name": self.state["model"].name, "ready": self.state["ready"]}, 200 if self.state["ready"] else 503)

    async def infer(self, request: Request) -> Response:
        """An inference request, counted and timed; every failure answered as JSON."""
        started = time.perf_counter()
        label = self.state["model"].name
        self.metrics.requests.labels(label).inc()
        try:
            payload, header_length = await self._infer(request)
        except OIPError as exc:
            self.metrics.errors.labels(label, str(exc.status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)
            return _error(str(exc), exc.status)
        except Exception as exc:  # noqa: BLE001 - answered as JSON, the server stays up
            self.metrics.errors.labels(label, "500").inc()
            return _error(f"inference failed: {type(exc).__name__}: {exc}", 500)
        self.metrics.latency.labels(label).observe(time.perf_counter() - started)
        if header_length is None:
            return Response(payload, 200, media_type="application/json")
        return Response(payload, 200, media_type="application/octet-stream", headers={oip.HEADER_LENGTH: str(header_length)})

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, 200, headers={"Content-Type": content_type})

    async def _infer(self, request: Request) -> tuple[bytes, int | None]:
        """The response body and its JSON header's length (None: all JSON), or an OIPError."""
        if not self.state["ready"]:
            raise OIPError("the server is not ready (starting or shutting down)", 503)
        m = self.find(request)
        self.batcher.arriving += 1
        try:
            req, feed, rows = await self._prepare(request, m)
        finally:
            self.batcher.arriving -= 1  # and queued below with no await in between: never missed
        results = await self.batcher.run(m, feed, rows)
        return respond(m, req, results)

    async def _prepare(self, request: Request, m: ServedModel) -> tuple[oip.InferRequest, dict[str, Any], int]:
        """Read and parse the request, and make the model's feed from it."""
        body = await _read_body(request, self.limits.max_request_bytes)
        header = request.headers.get(oip.HEADER_LENGTH)
        # Parsing a large body and decoding images are CPU work: off the event loop, in one hop, so that
        # health checks, metrics and other requests keep answering while a hostile body is refused.
        return await asyncio.get_running_loop().run_in_executor(None, _parse_and_prepare, body, header, m, self.limits)


def _parse_and_prepare(body: bytes, header: str | None, m: ServedModel, limits: Limits) -> tuple[oip.InferRequest, dict[str, Any], int]:
    max_values = m.max_json_values(limits.max_batch_size, limits.max_elements)
    req = oip.parse_request(body, header, limits.max_elements, limits.max_batch_size, max_values)
    check_outputs(m, req)
    feed, rows = prepare(m, req, limits)
    return req, feed, rows


def _routes(h: Handlers) -> list[Route]:
    model_paths = ["/v2/models/{model}", "/v2/models/{model}/versions/{version}"]
    return [
        Route("/v2", h.server_metadata), Route("/v2/", h.server_metadata),
        Route("/v2/health/live", h.live), Route("/v2/health/ready", h.ready),
        *[Route(p, h.model_metadata) for p in model_paths],
        *[Route(f"{p}/ready", h.model_ready) for p in model_paths],
        *[Route(f"{p}/infer", h.infer, methods=["POST"]) for p in model_paths],
        Route("/metrics", h.prometheus),
    ]  # fmt: skip


def _lifespan(
    h: Handlers, follower: AliasFollower, reload_seconds: float | None, sighup: bool
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """Ready while the batcher and the follower run; not ready, and in-flight batches finished, after."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        h.batcher.start()
        follower.start(reload_seconds, sighup)
        h.state["ready"] = True
        try:
            yield
        finally:
            h.state["ready"] = False
            follower.stop()
            await h.batcher.stop()

    return lifespan


def _answer(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body).encode(), status, media_type="application/json")


def _error(message: str, status: int) -> Response:
    return Response(oip.error_body(message), status, media_type="application/json")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own errors (404 for an unknown path, 405 for a wrong method) in the protocol's shape."""
    return _error(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 past `limit` bytes. The rest of an oversized body is read and dropped (up to a
    bound) so the client, still sending, gets the answer rather than a reset connection."""
    declared = request.headers.get("content-length")
    too_big = OIPError(f"the request body is more than {limit} bytes (--max-request-bytes)", 413)
    if declared and declared.isdigit() and int(declared) > limit + OVERSIZED_DRAIN:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit + OVERSIZED_DRAIN:
            break
    if size > limit:
        raise too_big
    return b"".join(chunks)
