"""Authenticated `mlflow server`s on loopback, for tests/test_auth.py and bench/auth_server.py.

`auth_server` starts MLflow's own `--app-name basic-auth` server (through `servers.MlflowServer`),
with its user database in a temporary folder. With `api_key=...` the server's
`authorization_function` is this module's `authenticate_api_key` instead, which the server process
imports (this folder is put on its PYTHONPATH): it accepts a request only with the right key in
`X-Api-Key` (or, when configured, the right bearer token, or a limited key that may not move
aliases), acts as the admin user, and
appends one line per request it judged to `requests.log`:
`<method> <path> key=<yes|limited|no|wrong> bearer=<yes|no|wrong>`. uvicorn's access log (`server.log`)
lists every request the server received, to compare with.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from servers import MlflowServer, access_log_requests

HERE = Path(__file__).resolve().parent
ADMIN = "admin"
ADMIN_PASSWORD = "admin-password-0123"  # MLflow wants 12 characters or more

# Read by `authenticate_api_key` inside the server process.
KEY_ENV = "AUTH_TEST_API_KEY"
LIMITED_KEY_ENV = "AUTH_TEST_LIMITED_API_KEY"  # a key that may do anything but move aliases (403)
TOKEN_ENV = "AUTH_TEST_BEARER_TOKEN"
LOG_ENV = "AUTH_TEST_REQUEST_LOG"
KEY_HEADER = "X-Api-Key"


@dataclass(frozen=True)
class AuthServer:
    url: str
    root: Path
    server: MlflowServer

    def requests_judged(self) -> list[dict[str, str]]:
        """What `authenticate_api_key` logged: one dict (method, path, key, bearer) per request it judged."""
        log = self.root / "requests.log"
        seen = []
        for line in log.read_text().splitlines() if log.exists() else []:
            method, path, *fields = line.split(" ")
            seen.append({"method": method, "path": path, **dict(f.split("=", 1) for f in fields)})
        return seen

    def requests_received(self) -> list[tuple[str, str]]:
        """(method, path) of every request the server answered, from uvicorn's access log."""
        return access_log_requests(self.root / "server.log")

    def forget_requests(self) -> None:
        """Start both request logs afresh, so that a test looks only at the requests it made."""
        (self.root / "requests.log").unlink(missing_ok=True)
        (self.root / "server.log").write_bytes(b"")  # the server appends (O_APPEND): it writes on from the start


@contextlib.contextmanager
def auth_server(
    root: Path, *, cache_ttl_s: int = 0, api_key: str | None = None, bearer_token: str | None = None,
    limited_key: str | None = None, workers: int | None = 1, jobs: bool = False,
) -> Iterator[AuthServer]:  # fmt: skip
    """`mlflow server --app-name basic-auth` (SQLite backend, proxied artefacts under `root`), stopped on exit.

    Args:
        root: Folder for the server's databases, artefacts, auth config and logs.
        cache_ttl_s: MLflow's `auth_cache_ttl_seconds`; 0 (MLflow's default) verifies the password
            hash (werkzeug's scrypt) on every request.
        api_key: Authenticate with `authenticate_api_key` and this key instead of basic auth.
        bearer_token: With `api_key`, also accept this bearer token.
        limited_key: With `api_key`, also accept this key, but refuse it (403) any alias move.
        workers: Server worker processes (None: MLflow's default, 4).
        jobs: Keep MLflow's job runner (its extra processes only cost start-up time here).
    """
    root.mkdir(parents=True, exist_ok=True)
    function = "auth_servers:authenticate_api_key" if api_key else "mlflow.server.auth:authenticate_request_basic_auth"
    ini = root / "auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        f"authorization_function = {function}\n"
        f"auth_cache_ttl_seconds = {cache_ttl_s}\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "champion-tests-secret",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(jobs).lower(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        LOG_ENV: str(root / "requests.log"),
        KEY_ENV: api_key or "",
        TOKEN_ENV: bearer_token or "",
        LIMITED_KEY_ENV: limited_key or "",
    }
    server = MlflowServer(
        f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"), env=env, log=root / "server.log", workers=workers,
        extra=("--app-name", "basic-auth"),
    )  # fmt: skip
    with server:
        found = AuthServer(server.url, root, server)
        found.forget_requests()
        yield found


def admin_env(url: str) -> dict[str, str]:
    """The environment of the admin user on the server at `url`."""
    return {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}


def provision(url: str, editor: str, password: str, models: tuple[str, ...], others: dict[str, str] | None = None) -> None:
    """As the admin: create `editor` (and `others`, name -> password, who keep the server's default
    READ) and give `editor` EDIT on what champion runs write, made beforehand as a team's admin
    would: the experiments `champion`, `model-exports` and `champion-events`, and for each of
    `models` the registered models `<m>`, `<m>-onnx` and `<m>@lease` (the promotion lease's)."""
    from mlflow import MlflowClient
    from mlflow.server import get_app_client

    from champion import names
    from champion.registry import history

    saved = {k: os.environ.get(k) for k in admin_env(url)}
    os.environ.update(admin_env(url))  # MLflow's clients read the credentials from the environment
    try:
        auth = get_app_client("basic-auth", tracking_uri=url)
        for user, secret in {editor: password, **(others or {})}.items():
            auth.create_user(user, secret)
        c = MlflowClient(tracking_uri=url)
        for experiment in ("champion", "model-exports", history.EVENTS_EXPERIMENT):
            auth.grant_user_permission(editor, "experiment", c.create_experiment(experiment), "EDIT")
        for model in models:
            for name in (model, f"{model}-onnx", names.lease_name(model)):
                c.create_registered_model(name)
                auth.grant_user_permission(editor, "registered_model", name, "EDIT")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def authenticate_api_key():
    """An MLflow `authorization_function` (runs in the server): the right API key, or the right bearer
    token, acts as the admin user; anything else is refused with 401. Every request judged is logged."""
    from flask import Response, request
    from werkzeug.datastructures import Authorization

    def judge(sent: str | None, expected: str | None) -> str:
        return "no" if not sent else ("yes" if expected and sent == expected else "wrong")

    key = judge(request.headers.get(KEY_HEADER), os.environ.get(KEY_ENV))
    if key == "wrong" and judge(request.headers.get(KEY_HEADER), os.environ.get(LIMITED_KEY_ENV)) == "yes":
        key = "limited"
    auth = request.headers.get("Authorization", "")
    bearer = judge(auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None, os.environ.get(TOKEN_ENV))
    line = f"{request.method} {request.path} key={key} bearer={bearer}\n"
    # One write per line to a file opened for appending: lines from several workers do not interleave.
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    if key == "limited" and "/registered-models/alias" in request.path:
        return Response("Permission denied", 403)  # as a gateway that lets this key register but not promote
    if key in ("yes", "limited") or bearer == "yes":
        return Authorization("basic", {"username": ADMIN, "password": ""})
    return Response(f"a valid {KEY_HEADER} header or bearer token is required", 401)
