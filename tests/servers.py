"""Real servers on loopback for the tests (and bench/tracking_server.py): `mlflow server`, moto's S3,
PostgreSQL, `champion serve`.

Each helper starts the real thing on a free 127.0.0.1 port and stops what it started: an `mlflow
server` process group (uvicorn and its workers), a moto S3 server thread, a PostgreSQL database
created under a unique name and dropped afterwards. Nothing here mocks MLflow, S3 or the database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, MutableMapping

# Dummy credentials for moto, and the settings of a developer's shell that must not leak into a test.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",  # no 1 s wait on the instance metadata service
}
AWS_LEAKS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

POSTGRES_HOST = os.environ.get("CHAMPION_TEST_PGHOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("CHAMPION_TEST_PGPORT", "5432"))
POSTGRES_USER = os.environ.get("CHAMPION_TEST_PGUSER", "postgres")


def free_port() -> int:
    """A loopback port free a moment ago: one to start a server on, or one where nothing answers.

    The one definition in tests/: the kernel picks it (bind to port 0), so parallel runs do not clash.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_test_env(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """`env` with moto's dummy credentials and without the caller's AWS profile, token or endpoint."""
    for name in AWS_LEAKS:
        env.pop(name, None)
    env.update(AWS_TEST_ENV)
    return env


@contextlib.contextmanager
def moto_s3(mp=None) -> Iterator[str]:
    """A moto S3 server on a free loopback port; yields its endpoint URL.

    Args:
        mp: a pytest MonkeyPatch: when given, this process's environment gets the dummy credentials
            (and loses the caller's AWS profile, token and endpoint) for as long as `mp` lasts.
    """
    from moto.server import ThreadedMotoServer

    if mp is not None:
        for name in AWS_LEAKS:
            mp.delenv(name, raising=False)
        for name, value in AWS_TEST_ENV.items():
            mp.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def postgres_unavailable() -> str | None:
    """Why the local PostgreSQL cannot be used (None when it can): the reason a test skips with."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary; it is in the test extra)"
    try:
        psycopg2.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname="postgres", connect_timeout=3).close()
    except psycopg2.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"PostgreSQL is not reachable at {POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT} ({first}); "
            "set CHAMPION_TEST_PGHOST/PGPORT/PGUSER to a server that lets that user create databases"
        )
    return None


def _admin():
    import psycopg2

    conn = psycopg2.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname="postgres", connect_timeout=5)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return conn


@contextlib.contextmanager
def postgres_database(prefix: str = "champion_test") -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database; yields its SQLAlchemy URI and drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        try:
            # psycopg2 named explicitly: SQLAlchemy 2.1 would pick psycopg (3), which is not installed.
            yield f"postgresql+psycopg2://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
        finally:
            with conn.cursor() as cur:
                # FORCE: a server that died without closing its pool must not keep the database alive.
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def query(uri: str, sql: str, *args) -> list[tuple]:
    """Rows of one SQL query on the database at `uri` (a postgresql:// URI from `postgres_database`)."""
    import psycopg2

    conn = psycopg2.connect(uri.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


class MlflowServer:
    """`mlflow server` in its own process group on a loopback port; start, stop (kill) and start again.

    The port stays the same across restarts, as a team's server keeps its address. The server's
    stdout and stderr (uvicorn's access log among them) go to `log`, when given.
    """

    def __init__(
        self, backend_store_uri: str, artifacts_destination: str, *, port: int | None = None,
        env: dict[str, str] | None = None, log: Path | None = None, workers: int | None = 1, extra: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:  # fmt: skip
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.port = port or free_port()
        # MLflow's job runner (server-side GenAI jobs) is off unless asked for: champion does not use it,
        # and its processes cost start-up time and CPU that the tests' training would share.
        self.env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **(env or {})}
        self.log_path = log
        self.workers = workers
        self.extra = extra
        self.cwd = cwd  # where the server runs: a server that wrote local files would write them here
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("mlflow")
        return [
            str(exe), "server", "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--host", "127.0.0.1", "--port", str(self.port),
            *([] if self.workers is None else ["--workers", str(self.workers)]), *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 120) -> "MlflowServer":
        """Start the server and wait until /health answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log
        self.proc = subprocess.Popen(
            self.command(), env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited with {self.proc.returncode}{self._log_tail()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not answer /health within {timeout:.0f} s{self._log_tail()}") from None
                time.sleep(0.2)

    def kill(self) -> None:
        """Stop the server at once (SIGKILL to its process group), as a crash or a lost machine would."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may have exited between poll() and the signal
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return ":\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def s3_server_env(endpoint: str) -> dict[str, str]:
    """The environment an `mlflow server` with `--artifacts-destination s3://...` on moto needs."""
    env = dict(aws_test_env(dict(os.environ)))
    env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    return env


def access_log_requests(log: Path) -> list[tuple[str, str]]:
    """(method, path) of each request in uvicorn's access log, in order (query strings dropped)."""
    import re

    pattern = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/[\d.]+" \d{3}')
    found = []
    for line in log.read_text(errors="replace").splitlines():
        m = pattern.search(line)
        if m:
            found.append((m.group(1), m.group(2).split("?")[0]))
    return found


@dataclass
class ServeProcess:
    """A `champion serve` process on free loopback ports."""

    proc: subprocess.Popen
    url: str  # HTTP
    grpc: str | None = None  # host:port, with --grpc-port
    ready_s: float = 0.0  # from starting the process to ready

    def stop(self) -> int:
        """SIGTERM (the drain), then its exit code; killed after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_serve(
    *args: str, grpc: bool = False, expect_ready: bool = True, ready: Callable[[ServeProcess], bool] | None = None
) -> ServeProcess:
    """`champion serve ARGS` on a free port (and a free --grpc-port with `grpc`), in the working folder,
    returned once `/v2/health/ready` answers 200 and `ready(server)` holds; at once with `expect_ready=False`."""
    port = free_port()
    grpc_port = free_port() if grpc else None
    extra = ["--grpc-port", str(grpc_port)] if grpc_port else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "champion", "serve", "--port", str(port), *extra, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = ServeProcess(proc, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}" if grpc_port else None)
    if not expect_ready:
        return server
    started = time.perf_counter()
    while time.perf_counter() - started < 120:
        if proc.poll() is not None:
            raise AssertionError(f"champion serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(server.url + "/v2/health/ready", timeout=5) as resp:
                if resp.status == 200 and (ready is None or ready(server)):
                    server.ready_s = time.perf_counter() - started
                    return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise AssertionError("champion serve did not become ready in 120 s")
