"""The Starlette application of `champion serve`: the Open Inference Protocol's routes and handlers.

Server and model metadata, liveness and readiness, inference (`/v2/models/<name>[/versions/<v>]/infer`)
and Prometheus metrics at /metrics. Every error is answered as the protocol's `{"error": message}`
JSON. What the handlers share with the gRPC door (model, readiness, limits, metrics, batcher) is the
`Service` in `champion.deploy.service`, at `app.state.service`; the app's lifespan is its `serving`
span (batcher and alias follower running), which is what makes it ready.
"""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from champion import __version__
from champion.deploy import oip
from champion.deploy.limits import Limits
from champion.deploy.model import ServedModel
from champion.deploy.oip import OIPError
from champion.deploy.prepare import respond
from champion.deploy.reload import AliasFollower
from champion.deploy.service import EXTENSIONS, SERVER_NAME, Prepared, Service

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
    service = Service(model, limits or Limits())
    handlers = Handlers(service)
    follower = AliasFollower(service.state, alias, quiet)
    lifespan = _lifespan(service, follower, reload_seconds, sighup)
    app = Starlette(routes=_routes(handlers), lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.champion = service.state
    app.state.service = service  # for another door on the same loop (champion.deploy.grpc_service)
    return app


class Handlers:
    """The HTTP request handlers over the `Service` they share with the other doors."""

    def __init__(self, service: Service):
        self.service = service
        self.limits = service.limits
        self.metrics = service.metrics
        self.state = service.state

    def find(self, request: Request) -> ServedModel:
        """The served model, if the path names it (and its version, when it names one)."""
        return self.service.find(request.path_params["model"], request.path_params.get("version"))

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
        try:
            payload, header_length = await self.service.measured(self._infer(request))
        except OIPError as exc:
            return _error(str(exc), exc.status)
        if header_length is None:
            return Response(payload, 200, media_type="application/json")
        return Response(payload, 200, media_type="application/octet-stream", headers={oip.HEADER_LENGTH: str(header_length)})

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, 200, headers={"Content-Type": content_type})

    async def _infer(self, request: Request) -> tuple[bytes, int | None]:
        """The response body and its JSON header's length (None: all JSON), or an OIPError."""
        params = request.path_params
        m, req, results = await self.service.infer(params["model"], params.get("version"), lambda m: self._prepare(request, m))
        return respond(m, req, results)

    async def _prepare(self, request: Request, m: ServedModel) -> Prepared:
        """Read and parse the request, and make the model's feed from it (off the event loop unless small)."""
        body = await _read_body(request, self.limits.max_request_bytes)
        header = request.headers.get(oip.HEADER_LENGTH)
        return await self.service.prepare(len(body), functools.partial(oip.parse_request, body, header), m)


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
    service: Service, follower: AliasFollower, reload_seconds: float | None, sighup: bool
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """The service's `serving` span: ready while the batcher and the follower run."""

    def lifespan(app: Starlette) -> contextlib.AbstractAsyncContextManager[None]:
        return service.serving(follower, reload_seconds, sighup)

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
