"""`champion serve`: a validated `<name>-onnx` version over the Open Inference Protocol (KServe v2, HTTP and gRPC).

`champion serve --model-name digits-cnn` loads `digits-cnn-onnx@deploy` from the registry, checks
its files against the sha256 recorded at export (and refuses to start on a mismatch), and serves it
with ONNX Runtime as model `digits-cnn`: the name `champion deploy triton` gives it, so a client
works against either server unchanged. `--model-name digits-cnn-onnx-int8` serves the int8 model the
int8 gate registered (`champion.stages.quantize`) as `digits-cnn-int8`, as `deploy triton` names it.

The model takes what Triton would give it (the ONNX graph's float tensors) and, besides, encoded
image files in a BYTES input named `image`, prepared as ingestion prepared the training images.
Requests that arrive together run as one ONNX Runtime batch. Nothing here imports PyTorch or Lightning.
With `grpc_port` the same service also answers the protocol's gRPC calls (`champion[grpc]`), in the
same event loop, sharing the model, limits, metrics and batcher with HTTP.

This module is the entry point: `serve` runs the app under uvicorn (and the gRPC server beside it)
until SIGTERM or Ctrl-C, which drain in-flight requests of both first. The pieces live beside it,
and their names are re-exported here:

    model.py     load_model, resolve_name, ServedModel, TensorSpec: the verified registry version
    limits.py    Limits: batch, delay, body and tensor-size limits
    service.py   Service: what both protocols share (model, readiness, metrics, batcher)
    app.py       build_app: the Starlette routes and handlers
    grpc_service.py  GrpcServer: the gRPC service (imported only with a gRPC port: grpcio is an extra)
    prepare.py   prepare, respond: request to ONNX Runtime feed, results to response
    batching.py  Batcher: dynamic batching
    metrics.py   Metrics: the Prometheus metrics
    reload.py    AliasFollower: serving the version an alias moves to (timer, SIGHUP)
    oip.py       the protocol's parsing and encoding
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from champion.deploy.app import EXTENSIONS, SERVER_NAME, build_app
from champion.deploy.batching import Batcher
from champion.deploy.limits import Limits
from champion.deploy.metrics import Metrics
from champion.deploy.model import IMAGE_INPUT, ServedModel, TensorSpec, load_model, resolve_name
from champion.deploy.prepare import check_outputs, prepare, respond
from champion.errors import ChampionError, ConfigError
from champion.progress import say
from champion.registry import tracking

if TYPE_CHECKING:
    import uvicorn  # annotations only: `serve` imports it when a server starts

# The names callers (the CLI, tests, benches) have always reached as `serve.<name>`.
__all__ = [
    "EXTENSIONS", "IMAGE_INPUT", "SERVER_NAME", "Batcher", "Limits", "Metrics", "ServedModel", "TensorSpec",
    "build_app", "check_outputs", "load_model", "prepare", "resolve_name", "respond", "serve",
]  # fmt: skip


def serve(
    model_name: str | None = None,
    alias: str = tracking.DEPLOY_ALIAS,
    version: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: Limits | None = None,
    reload_seconds: float | None = None,
    quiet: bool = False,
    grpc_port: int | None = None,
) -> None:
    """Load the model, then serve it until SIGTERM or Ctrl-C (which drain in-flight requests first).

    `reload_seconds`: check `alias` that often and serve the version it moves to (not with `version`).
    SIGHUP does the same check at once, with or without `reload_seconds`. `grpc_port`: also serve the
    protocol over gRPC on `host`:`grpc_port` (None: HTTP only).

    Raises:
        ConfigError: bad options.
        ChampionError, IntegrityError: as `load_model`; nothing is served.
    """
    import uvicorn  # lazy: only a serving process needs it, not every `champion` command

    limits = limits or Limits()
    _check_options(limits, version, port, grpc_port)
    if reload_seconds is not None and (version is not None or not reload_seconds > 0):
        raise ConfigError("--reload-on-alias-change SECONDS: more than 0, and only with --alias (a --version never moves)")
    grpc_service = None if grpc_port is None else _grpc_service()  # before the model loads: a missing extra fails at once
    started = time.perf_counter()
    model = load_model(model_name, alias, version, quiet)
    loaded = time.perf_counter() - started
    app = build_app(model, limits, None if version else alias, reload_seconds, quiet, sighup=True)
    sock = _listen(host, port)  # ours, not uvicorn's: a busy port is one line and exit 1, not its SystemExit(3)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=30))

    with sock:
        door = None
        if grpc_service is not None:
            # Tried with a socket of ours first: a busy port is one line, before gRPC logs its own bind failure.
            _listen(host, grpc_port, "--grpc-port").close()
            door = grpc_service.GrpcServer(app.state.service, host, grpc_port)

        def announce() -> None:
            also = f" and gRPC at {door.address}" if door is not None else ""
            say(
                f"serving {model.registry_name} v{model.version} as {model.name!r} at http://{host}:{port}/v2/models/{model.name}{also} "
                f"(loaded in {loaded:.2f} s, ready {time.perf_counter() - started:.2f} s after start)",
                quiet,
            )

        _run(server, announce, sock, door)
    if not server.started:
        raise ChampionError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")


def _grpc_service() -> ModuleType:
    """champion.deploy.grpc_service, or ChampionError when grpcio (the extra champion[grpc]) cannot run it."""
    try:
        from champion.deploy import grpc_service  # lazy: grpcio is an optional extra, and only this option needs it
    except ImportError as exc:
        raise ChampionError(f"--grpc-port needs grpcio, which champion installs as an extra: pip install 'champion[grpc]' ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - the generated modules refuse a grpcio or protobuf older than they need
        raise ChampionError(f"--grpc-port: the gRPC modules do not load ({exc}); pip install 'champion[grpc]' installs versions they run with") from None
    return grpc_service


def _listen(host: str, port: int, option: str = "--port") -> socket.socket:
    """A socket bound to `host`:`port`, for uvicorn to listen on (`option`: the flag that chose the port).

    Raises:
        ChampionError: the address cannot be bound (the port is in use, or `host` is not this machine's).
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ChampionError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host") from None
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a keep-alive client waits out the peer's delayed ACK (40 ms) on every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        busy = exc.errno == errno.EADDRINUSE
        raise ChampionError(
            f"cannot listen on {host}:{port}: {exc.strerror}"
            + (f"; another process serves on that port: choose another {option}, or stop it" if busy else "; check --host")
        ) from None
    return sock


def _run(server: uvicorn.Server, announce: Callable[[], None], sock: socket.socket, door: Any = None) -> None:
    """Run `server` on `sock` until it stops, calling `announce` once it listens; signal handlers restored after.

    `door`: a `grpc_service.GrpcServer` to serve beside it, in the same loop. It stops taking calls when
    uvicorn is told to stop (SIGTERM, Ctrl-C), and the app's lifespan waits for its calls in flight
    before the batcher stops (`Service.on_stop`).
    """

    async def main() -> None:
        if door is not None:
            await door.start()  # not ready until uvicorn has run the app's lifespan: UNAVAILABLE until then
        try:
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            if server.started:
                announce()
            if door is not None:
                while not server.should_exit and not serving.done():
                    await asyncio.wait({serving}, timeout=0.05)
                door.begin_stop()  # with HTTP's intake, not after HTTP has drained
            await serving
        finally:
            if door is not None:
                await door.stop()

    # uvicorn takes SIGTERM and SIGINT while it serves (stop accepting, finish in-flight requests,
    # stop), then raises the signal again against the handler it found: a no-op one here, so a
    # drained server ends with exit code 0 rather than the CLI's 130 for an interrupted step.
    previous = {sig: signal.signal(sig, _drained) for sig in (signal.SIGTERM, signal.SIGINT)}
    # SIGHUP, "follow the alias now", must not end the process before the app takes it over.
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # uvicorn's own choice of event loop: uvloop when installed (a dependency on Linux), as `uvicorn.run` would.
    loop_factory = server.config.get_loop_factory() if hasattr(server.config, "get_loop_factory") else None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drained(signum: int, frame: object) -> None:
    pass


def _check_options(limits: Limits, version: str | None, port: int, grpc_port: int | None = None) -> None:
    """Raises ConfigError for the first bad option, in the order the CLI has always checked them."""
    if version is not None and not version.isdigit():
        raise ConfigError(f"--version {version!r}: a model version number (1, 2, ...)")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: 0 to 65535")
    if grpc_port is not None and not 0 <= grpc_port <= 65535:
        raise ConfigError(f"--grpc-port {grpc_port}: 0 to 65535")
    if grpc_port is not None and grpc_port == port != 0:
        raise ConfigError(f"--grpc-port {grpc_port} is the HTTP --port: gRPC needs a port of its own (Triton's is 8001)")
    limits.check()
