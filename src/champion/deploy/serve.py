"""Serve a validated `<name>-onnx` version over the Open Inference Protocol (KServe v2, HTTP).

`champion serve --model-name digits-cnn` loads `digits-cnn-onnx@deploy` from the registry, checks
its files against the sha256 recorded at export (and refuses to start on a mismatch), and serves it
with ONNX Runtime as model `digits-cnn`: the name `champion deploy triton` gives it, so a client
works against either server unchanged. `--model-name digits-cnn-onnx-int8` serves the int8 model the
int8 gate registered (`champion.stages.quantize`) as `digits-cnn-int8`, as `deploy triton` names it.

The model takes what Triton would give it (the ONNX graph's float tensors) and, besides, encoded
image files in a BYTES input named `image`. Those are prepared by `champion.ingest.decode`, the code
ingestion used on the training images, with the image size and channels the export recorded and the
training run's resize policy: there is one source of truth for preprocessing, and none of it is a
server flag. The graph normalises; the server only scales uint8 to [0, 1], as training did.

Requests that arrive within `max_delay_ms` of each other run as one ONNX Runtime batch of at most
`max_batch_size` items; a batch waits only while other requests are being received or prepared, so a
lone request runs at once. Nothing here imports PyTorch or Lightning.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from champion import names
from champion.deploy import oip
from champion.deploy.oip import OIPError
from champion.errors import ChampionError, ConfigError
from champion.preprocessing import Preprocessing
from champion.registry import exports, tracking

IMAGE_INPUT = "image"  # the BYTES input that takes encoded image files (JPEG, PNG, ...)
SERVER_NAME = "champion"
EXTENSIONS = ["binary_tensor_data", "classification"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # OIP datatype (FP32, INT64, ...)
    shape: tuple[int, ...]  # -1 where the graph's dimension is symbolic

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ServedModel:
    """One registry version, loaded and verified."""

    name: str  # the name served under /v2/models/ (the base name, without -onnx)
    version: str
    registry_name: str  # <name>-onnx
    sha256: str
    session: Any  # onnxruntime.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str]
    preprocessing: Preprocessing | None  # None when the graph does not take one image tensor
    batched: bool  # every input and output has a symbolic first axis

    def metadata(self) -> dict[str, Any]:
        inputs = [t.metadata() for t in self.inputs]
        if self.preprocessing is not None:
            inputs.append({"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]})
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": inputs,
            "outputs": [t.metadata() for t in self.outputs],
        }


@dataclass
class Limits:
    max_batch_size: int = 64  # items per ONNX Runtime run, and per request
    max_delay_ms: float = 2.0  # the longest the first request of a batch waits for others on their way
    max_request_bytes: int = 64 * 1024**2
    max_elements: int = 16 * 1024**2  # tensor elements per request (decoded image pixels included)


def resolve_name(model_name: str | None) -> str:
    """The base name to serve: `model_name` without -onnx, or the one `-onnx` model the registry holds.

    An int8 model's name (`<name>-onnx-int8`) is returned whole: `names.served_names` maps it.
    """
    if model_name and model_name.endswith(names.INT8_SUFFIX):
        return model_name
    if model_name:
        return model_name.removesuffix(names.ONNX_SUFFIX)
    validated = sorted(m.name for m in tracking.registered_models() if m.name.endswith(names.ONNX_SUFFIX))
    if len(validated) != 1:
        found = ", ".join(validated) or "none"
        raise ConfigError(f"--model-name is needed: the registry holds {len(validated)} validated ONNX models ({found}), not exactly one")
    return validated[0].removesuffix(names.ONNX_SUFFIX)


def load_model(model_name: str | None = None, alias: str = tracking.DEPLOY_ALIAS, version: str | None = None) -> ServedModel:
    """Download `<name>-onnx` at `version` (or `@alias`), check its hash, and open an ONNX Runtime session.

    Raises:
        ChampionError: unknown model, alias or version; not a Quality Gate 2 pass.
        IntegrityError: the files do not hash to what the export recorded.
    """
    import onnxruntime as ort

    tracking.setup_tracking()
    base, registry_name = names.served_names(resolve_name(model_name))
    mv = exports.deployable(registry_name, alias, version)
    with tempfile.TemporaryDirectory(prefix="champion-serve-") as tmp:
        graph, record, digest, _ = exports.verified_graph(mv, Path(tmp))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # External data is read when the session is created, so the download can go right after.
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def spec(value) -> TensorSpec:
        datatype = oip.ORT_TYPES.get(value.type)
        if datatype is None:
            raise ChampionError(f"{mv.name} v{mv.version}: graph value {value.name!r} has type {value.type}, which the protocol cannot carry")
        return TensorSpec(value.name, datatype, tuple(d if isinstance(d, int) and d >= 0 else -1 for d in value.shape))

    inputs, outputs = [spec(v) for v in session.get_inputs()], [spec(v) for v in session.get_outputs()]
    if IMAGE_INPUT in {t.name for t in inputs + outputs}:
        raise ChampionError(f"{mv.name} v{mv.version}: the graph has a tensor named {IMAGE_INPUT!r}, the name of the image-file input")
    pre = record.preprocessing
    preprocessing = None
    [first, *rest] = inputs
    if not rest and first.datatype == "FP32" and first.shape[1:] == (pre["channels"], *pre["image_size"]):
        # Resize policy and pixel cap: the training run's params, as ingestion used them.
        params = tracking.get_run(record.parent_run_id).data.params if record.parent_run_id else {}
        preprocessing = Preprocessing.from_dict(pre, params)
    batched = all(t.shape and t.shape[0] == -1 for t in inputs + outputs)
    return ServedModel(base, str(mv.version), mv.name, digest, session, inputs, outputs, record.classes, preprocessing, batched)


# --- dynamic batching ------------------------------------------------------------------------------


@dataclass
class _Pending:
    feed: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    model: "ServedModel"  # the one the request was prepared for: a reload must not answer it from another
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Runs queued requests as one ONNX Runtime batch: each caller gets its own rows back."""

    def __init__(self, limits: Limits, metrics: "Metrics"):
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

    async def run(self, model: "ServedModel", feed: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
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
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            batch, rows, model = [first], first.rows, first.model
            if model.batched:
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
            batch = [p for p in batch if not p.future.cancelled()]  # callers that went away
            if not batch:
                continue
            try:  # nothing may escape: a dead batcher would leave every later request hanging
                feed = {k: np.concatenate([p.feed[k] for p in batch]) for k in batch[0].feed} if len(batch) > 1 else batch[0].feed
                results = await loop.run_in_executor(self.executor, model.session.run, None, feed)
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the failure
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.metrics.batch_size.observe(rows)
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result([r[start : start + p.rows] for r in results] if model.batched else results)
                start += p.rows


# --- metrics ---------------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("champion_serve_requests", "Inference requests received", ["model"], registry=self.registry)
        self.errors = Counter("champion_serve_errors", "Inference requests answered with an error", ["model", "status"], registry=self.registry)
        self.latency = Histogram(
            "champion_serve_request_latency_seconds", "Time from receiving an inference request to answering it",
            ["model"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.batch_size = Histogram(
            "champion_serve_batch_size", "Items per ONNX Runtime run", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )  # fmt: skip

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --- preparing a request ---------------------------------------------------------------------------


def prepare(model: ServedModel, req: oip.InferRequest, limits: Limits, json_images: bool) -> tuple[dict[str, np.ndarray], int]:
    """The feed for ONNX Runtime and the number of items, or an OIPError that says what is wrong."""
    given = set(req.inputs)
    if IMAGE_INPUT in given and model.preprocessing is not None:
        if given != {IMAGE_INPUT}:
            raise OIPError(f"input {IMAGE_INPUT!r} (image files) goes alone, not with {sorted(given - {IMAGE_INPUT})}")
        return _images(model, req.inputs[IMAGE_INPUT], limits, json_images)
    expected = {t.name for t in model.inputs}
    accepted = sorted(expected | ({IMAGE_INPUT} if model.preprocessing is not None else set()))
    if given - expected:
        raise OIPError(f"unknown input {sorted(given - expected)}; model {model.name!r} takes {accepted}")
    if expected - given:
        raise OIPError(f"missing input {sorted(expected - given)}; model {model.name!r} takes {accepted}")
    feed, rows = {}, set()
    for spec in model.inputs:
        datatype, shape, array = req.inputs[spec.name]
        if datatype != spec.datatype:
            raise OIPError(f"input {spec.name!r} is {spec.datatype}, not {datatype}")
        if len(shape) != len(spec.shape) or any(want not in (-1, got) for want, got in zip(spec.shape, shape)):
            raise OIPError(f"input {spec.name!r} has shape {list(spec.shape)} (-1: any), not {shape}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise OIPError(f"input {spec.name!r} holds NaN or infinite values")
        feed[spec.name] = array
        rows.add(shape[0] if shape else 1)
    if len(rows) != 1:
        raise OIPError(f"the inputs disagree on the batch size: {sorted(rows)}")
    n = rows.pop()
    _check_rows(model, n, limits)
    return feed, n


def _check_rows(model: ServedModel, n: int, limits: Limits) -> None:
    if n < 1:
        raise OIPError("the batch is empty")
    if model.batched and n > limits.max_batch_size:
        raise OIPError(f"a batch of {n} is more than --max-batch-size {limits.max_batch_size}: split the request")


def _images(model: ServedModel, given: tuple[str, list[int], np.ndarray], limits: Limits, json_images: bool):
    from champion.ingest.decode import decode

    datatype, shape, array = given
    pre = model.preprocessing
    assert pre is not None
    if datatype != "BYTES" or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise OIPError(f"input {IMAGE_INPUT!r} is BYTES of shape [-1] (one encoded image file per item), not {datatype} {shape}")
    n = shape[0]
    _check_rows(model, n, limits)
    if n * pre.channels * pre.image_size[0] * pre.image_size[1] > limits.max_elements:
        raise OIPError(f"{n} images of {pre.channels}x{pre.image_size[0]}x{pre.image_size[1]} are more than {limits.max_elements} elements (--max-elements)", 413)
    files = oip.decode_base64_images(array, IMAGE_INPUT) if json_images else array
    out = np.empty((n, pre.channels, *pre.image_size), dtype=np.float32)
    for i, data in enumerate(files.reshape(-1)):
        pixels, reason = decode(io.BytesIO(data), pre.image_size, pre.channels, pre.resize, pre.max_pixels)
        if pixels is None:
            raise OIPError(f"input {IMAGE_INPUT!r}: element {i} is not a readable image ({reason})")
        # uint8 to [0, 1] in float32, as training's evaluate.to_float did; the graph normalises.
        out[i] = pixels.astype(np.float32) / np.float32(255)
    return {model.inputs[0].name: out}, n


def respond(model: ServedModel, req: oip.InferRequest, results: list[np.ndarray]) -> tuple[bytes, int | None]:
    by_name = {spec.name: r for spec, r in zip(model.outputs, results)}
    wanted = req.outputs if req.outputs is not None else [oip.RequestedOutput(t.name, req.binary_output) for t in model.outputs]
    out = []
    for o in wanted:
        array = by_name[o.name]
        out.append((o.name, oip.classify(array, o.classification, model.labels) if o.classification else array, o.binary))
    return oip.encode_response(model.name, model.version, req.id, out)


def check_outputs(model: ServedModel, req: oip.InferRequest) -> None:
    if req.outputs is None:
        return
    known = {t.name for t in model.outputs}
    unknown = [o.name for o in req.outputs if o.name not in known]
    if unknown:
        raise OIPError(f"unknown output {unknown}; model {model.name!r} has {sorted(known)}")


# --- the HTTP app ----------------------------------------------------------------------------------


def build_app(
    model: ServedModel,
    limits: Limits | None = None,
    alias: str | None = None,
    reload_seconds: float | None = None,
    quiet: bool = True,
    sighup: bool = False,
):
    """The Starlette app serving `model` (the batcher starts with the app's lifespan).

    `alias`: the alias `model` was loaded by (None for a pinned version). With `reload_seconds` the
    registry is asked that often which version `alias` names, and with `sighup` whenever the process
    gets SIGHUP; when it has moved, that version is loaded and verified beside the served one and
    takes over from the next batch (requests in flight finish on the old one). One that fails to load
    (a hash mismatch, say) is reported and the old one kept.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    limits = limits or Limits()
    metrics = Metrics()
    state: dict[str, Any] = {"model": model, "ready": False}
    batcher = Batcher(limits, metrics)

    def answer(body: Any, status: int = 200) -> Response:
        import json

        return Response(json.dumps(body).encode(), status, media_type="application/json")

    def error(message: str, status: int) -> Response:
        return Response(oip.error_body(message), status, media_type="application/json")

    def find(request: Request) -> ServedModel:
        m = state["model"]
        name, version = request.path_params["model"], request.path_params.get("version")
        if name != m.name:
            raise OIPError(f"unknown model {name!r}: this server serves {m.name!r}", 404)
        if version not in (None, "", m.version):
            raise OIPError(f"model {name!r} has no version {version!r}: this server serves version {m.version}", 404)
        return m

    async def server_metadata(request: Request) -> Response:
        from champion import __version__

        return answer({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return answer({"live": True})

    async def ready(request: Request) -> Response:
        return answer({"ready": state["ready"]}, 200 if state["ready"] else 503)

    async def model_metadata(request: Request) -> Response:
        try:
            return answer(find(request).metadata())
        except OIPError as exc:
            return error(str(exc), exc.status)

    async def model_ready(request: Request) -> Response:
        try:
            find(request)
        except OIPError as exc:
            return error(str(exc), exc.status)
        return answer({"name": state["model"].name, "ready": state["ready"]}, 200 if state["ready"] else 503)

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        label = state["model"].name
        metrics.requests.labels(label).inc()
        try:
            if not state["ready"]:
                raise OIPError("the server is not ready (starting or shutting down)", 503)
            m = find(request)
            batcher.arriving += 1
            try:
                body = await _read_body(request, limits.max_request_bytes)
                loop = asyncio.get_running_loop()
                header = request.headers.get(oip.HEADER_LENGTH)
                req = oip.parse_request(body, header, limits.max_elements)
                check_outputs(m, req)
                # Decoding images is CPU work: off the event loop, so other requests keep flowing.
                feed, rows = await loop.run_in_executor(None, prepare, m, req, limits, header is None)
            finally:
                batcher.arriving -= 1  # and queued below with no await in between: never missed
            results = await batcher.run(m, feed, rows)
            payload, header_length = respond(m, req, results)
        except OIPError as exc:
            metrics.errors.labels(label, str(exc.status)).inc()
            metrics.latency.labels(label).observe(time.perf_counter() - started)
            return error(str(exc), exc.status)
        except Exception as exc:  # noqa: BLE001 - answered as JSON, the server stays up
            metrics.errors.labels(label, "500").inc()
            return error(f"inference failed: {type(exc).__name__}: {exc}", 500)
        metrics.latency.labels(label).observe(time.perf_counter() - started)
        if header_length is None:
            return Response(payload, 200, media_type="application/json")
        return Response(payload, 200, media_type="application/octet-stream", headers={oip.HEADER_LENGTH: str(header_length)})

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, 200, headers={"Content-Type": content_type})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code)

    switching = asyncio.Lock()  # the timer and SIGHUP never load the same version twice at once

    async def follow(alias: str) -> None:
        from champion.progress import say

        loop = asyncio.get_running_loop()
        async with switching:
            current = state["model"]
            try:
                mv = await loop.run_in_executor(None, tracking.model_version, current.registry_name, alias, None)
                if str(mv.version) == current.version:
                    return
                new = await loop.run_in_executor(None, load_model, current.registry_name, alias, str(mv.version))
            except Exception as exc:  # noqa: BLE001 - keep serving what is loaded; say why not the new one
                say(f"@{alias} of {current.registry_name}: not reloaded, still serving v{current.version}: {exc}", False)
                return
            state["model"] = new  # requests prepared for the old model are still answered by it
            say(f"@{alias} moved: now serving {new.registry_name} v{new.version} (was v{current.version})", quiet)

    async def watch(alias: str, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await follow(alias)

    def hangup() -> None:
        from champion.progress import say

        if alias is None:
            say(f"SIGHUP: serving pinned version {state['model'].version}, nothing to follow", False)
            return
        tasks.add(task := asyncio.get_running_loop().create_task(follow(alias)))
        task.add_done_callback(tasks.discard)

    tasks: set[asyncio.Task] = set()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import signal

        loop = asyncio.get_running_loop()
        batcher.start()
        watcher = loop.create_task(watch(alias, reload_seconds)) if alias and reload_seconds else None
        if sighup:
            loop.add_signal_handler(signal.SIGHUP, hangup)
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            if sighup:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in [watcher, *tasks]:
                if task is not None:
                    task.cancel()
            await batcher.stop()

    model_paths = ["/v2/models/{model}", "/v2/models/{model}/versions/{version}"]
    routes = [
        Route("/v2", server_metadata), Route("/v2/", server_metadata),
        Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        *[Route(p, model_metadata) for p in model_paths],
        *[Route(f"{p}/ready", model_ready) for p in model_paths],
        *[Route(f"{p}/infer", infer, methods=["POST"]) for p in model_paths],
        Route("/metrics", prometheus),
    ]  # fmt: skip
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.champion = state
    return app


async def _read_body(request, limit: int) -> bytes:
    """The body, or 413 past `limit` bytes. The rest of an oversized body is read and dropped (up to a
    bound) so the client, still sending, gets the answer rather than a reset connection."""
    declared = request.headers.get("content-length")
    too_big = OIPError(f"the request body is more than {limit} bytes (--max-request-bytes)", 413)
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024**2:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit + 64 * 1024**2:
            break
    if size > limit:
        raise too_big
    return b"".join(chunks)


def serve(
    model_name: str | None = None,
    alias: str = tracking.DEPLOY_ALIAS,
    version: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: Limits | None = None,
    reload_seconds: float | None = None,
    quiet: bool = False,
) -> None:
    """Load the model, then serve it until SIGTERM or Ctrl-C (which drain in-flight requests first).

    `reload_seconds`: check `alias` that often and serve the version it moves to (not with `version`).
    SIGHUP does the same check at once, with or without `reload_seconds`.

    Raises:
        ConfigError: bad options.
        ChampionError, IntegrityError: as `load_model`; nothing is served.
    """
    import uvicorn

    from champion.progress import say

    limits = limits or Limits()
    _check_limits(limits, version, port)
    if reload_seconds is not None and (version is not None or not reload_seconds > 0):
        raise ConfigError("--reload-on-alias-change SECONDS: more than 0, and only with --alias (a --version never moves)")
    started = time.perf_counter()
    model = load_model(model_name, alias, version)
    loaded = time.perf_counter() - started
    app = build_app(model, limits, None if version else alias, reload_seconds, quiet, sighup=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=30))

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            say(
                f"serving {model.registry_name} v{model.version} as {model.name!r} at http://{host}:{port}/v2/models/{model.name} "
                f"(loaded in {loaded:.2f} s, ready {time.perf_counter() - started:.2f} s after start)",
                quiet,
            )
        await serving

    import signal

    # uvicorn takes SIGTERM and SIGINT while it serves (stop accepting, finish in-flight requests,
    # stop), then raises the signal again against the handler it found: a no-op one here, so a
    # drained server ends with exit code 0 rather than the CLI's 130 for an interrupted step.
    previous = {sig: signal.signal(sig, _drained) for sig in (signal.SIGTERM, signal.SIGINT)}
    # SIGHUP, "follow the alias now", must not end the process before the app takes it over.
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        asyncio.run(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise ChampionError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")


def _drained(signum: int, frame: object) -> None:
    pass


def _check_limits(limits: Limits, version: str | None, port: int) -> None:
    if version is not None and not version.isdigit():
        raise ConfigError(f"--version {version!r}: a model version number (1, 2, ...)")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: 0 to 65535")
    if limits.max_batch_size < 1:
        raise ConfigError(f"--max-batch-size {limits.max_batch_size}: at least 1")
    if not (limits.max_delay_ms >= 0 and math.isfinite(limits.max_delay_ms)):
        raise ConfigError(f"--max-delay-ms {limits.max_delay_ms}: 0 or more")
    if limits.max_request_bytes < 1024:
        raise ConfigError(f"--max-request-bytes {limits.max_request_bytes}: at least 1024")
    if limits.max_elements < 1:
        raise ConfigError(f"--max-elements {limits.max_elements}: at least 1")
