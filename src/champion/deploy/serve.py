"""`champion serve`: a validated `<name>-onnx` version over the Open Inference Protocol (KServe v2, HTTP).

`champion serve --model-name digits-cnn` loads `digits-cnn-onnx@deploy` from the registry, checks
its files against the sha256 recorded at export (and refuses to start on a mismatch), and serves it
with ONNX Runtime as model `digits-cnn`: the name `champion deploy triton` gives it, so a client
works against either server unchanged. `--model-name digits-cnn-onnx-int8` serves the int8 model the
int8 gate registered (`champion.stages.quantize`) as `digits-cnn-int8`, as `deploy triton` names it.

The model takes what Triton would give it (the ONNX graph's float tensors) and, besides, encoded
image files in a BYTES input named `image`, prepared as ingestion prepared the training images.
Requests that arrive together run as one ONNX Runtime batch. Nothing here imports PyTorch or Lightning.

This module is the entry point: `serve` runs the app under uvicorn until SIGTERM or Ctrl-C, which
drain in-flight requests first. The pieces live beside it, and their names are re-exported here:

    model.py     load_model, resolve_name, ServedModel, TensorSpec: the verified registry version
    limits.py    Limits: batch, delay, body and tensor-size limits
    app.py       build_app: the Starlette routes and handlers
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
from typing import TYPE_CHECKING, Callable

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
) -> None:
    """Load the model, then serve it until SIGTERM or Ctrl-C (which drain in-flight requests first).

    `reload_seconds`: check `alias` that often and serve the version it moves to (not with `version`).
    SIGHUP does the same check at once, with or without `reload_seconds`.

    Raises:
        ConfigError: bad options.
        ChampionError, IntegrityError: as `load_model`; nothing is served.
    """
    import uvicorn  # lazy: only a serving process needs it, not every `champion` command

    limits = limits or Limits()
    _check_options(limits, version, port)
    if reload_seconds is not None and (version is not None or not reload_seconds > 0):
        raise ConfigError("--reload-on-alias-change SECONDS: more than 0, and only with --alias (a --version never moves)")
    started = time.perf_counter()
    model = load_model(model_name, alias, version)
    loaded = time.perf_counter() - started
    app = build_app(model, limits, None if version else alias, reload_seconds, quiet, sighup=True)
    sock = _listen(host, port)  # ours, not uvicorn's: a busy port is one line and exit 1, not its SystemExit(3)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=30))

    def announce() -> None:
        say(
            f"serving {model.registry_name} v{model.version} as {model.name!r} at http://{host}:{port}/v2/models/{model.name} "
            f"(loaded in {loaded:.2f} s, ready {time.perf_counter() - started:.2f} s after start)",
            quiet,
        )

    with sock:
        _run(server, announce, sock)
    if not server.started:
        raise ChampionError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port`, for uvicorn to listen on.

    Raises:
        ChampionError: the address cannot be bound (the port is in use, or `host` is not this machine's).
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ChampionError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        busy = exc.errno == errno.EADDRINUSE
        raise ChampionError(
            f"cannot listen on {host}:{port}: {exc.strerror}"
            + ("; another process serves on that port: choose another --port, or stop it" if busy else "; check --host")
        ) from None
    return sock


def _run(server: uvicorn.Server, announce: Callable[[], None], sock: socket.socket) -> None:
    """Run `server` on `sock` until it stops, calling `announce` once it listens; signal handlers restored after."""

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            announce()
        await serving

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


def _drained(signum: int, frame: object) -> None:
    pass


def _check_options(limits: Limits, version: str | None, port: int) -> None:
    """Raises ConfigError for the first bad option, in the order the CLI has always checked them."""
    if version is not None and not version.isdigit():
        raise ConfigError(f"--version {version!r}: a model version number (1, 2, ...)")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: 0 to 65535")
    limits.check()
