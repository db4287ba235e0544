"""Authentication against real `mlflow server --app-name basic-auth` processes on loopback.

Two servers for the module: MLflow's basic auth (users made through its auth REST API), and one
whose `authorization_function` accepts only a valid X-Api-Key or bearer token and logs what every
request carried (tests/auth_servers.py). Runs are the real CLI, in-process.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from auth_servers import KEY_HEADER, AuthServer, admin_env, auth_server, provision
from conftest import FAST, CliResult, image_folder, invoke

pytestmark = pytest.mark.slow

EDITOR, EDITOR_PASSWORD = "editor", "editor-password-1"
READER, READER_PASSWORD = "reader", "reader-password-1"
API_KEY, TOKEN, LIMITED_KEY = "key-0123456789", "token-0123456789", "limited-0123456789"
NAME = "digits-cnn"
# The variables every refusal names.
VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "CHAMPION_API_KEY")
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "CHAMPION_API_KEY",
                  "AM_SC_API_KEY", "CHAMPION_API_KEY_HEADER")  # fmt: skip
# One epoch is enough to show that every step gets through; the bar is lowered to match.
QUICK = [*FAST, "--set", "training.epochs=1", "--set", "promotion_criteria.threshold=0.5"]


def as_user(mp: pytest.MonkeyPatch, url: str, **env: str) -> None:
    """This process talks to `url` with exactly the credentials in `env` (none of the caller's)."""
    mp.setenv("MLFLOW_TRACKING_URI", url)
    for name in CREDENTIAL_ENV:
        mp.delenv(name, raising=False)
    for name, value in env.items():
        mp.setenv(name, value)


def admin_client(url: str):
    """An MlflowClient acting as the admin (credentials passed per call through the environment)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url)


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """MLflow's basic-auth server with the auth cache docs/authentication.md recommends, and two users:
    `editor` with EDIT on what a champion run writes (made by the admin, as a team's admin would:
    the experiments, the registered models and the hidden one holding their promotion lease), and
    `reader` with the server's default READ."""
    with auth_server(tmp_path_factory.mktemp("basic-auth"), cache_ttl_s=60) as server:
        provision(server.url, EDITOR, EDITOR_PASSWORD, (NAME, "digits-ro"), others={READER: READER_PASSWORD})
        yield server


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    root = tmp_path_factory.mktemp("api-key")
    with auth_server(root, api_key=API_KEY, bearer_token=TOKEN, limited_key=LIMITED_KEY) as server:
        yield server


@pytest.fixture
def workdir_at(workdir: Path, monkeypatch: pytest.MonkeyPatch):
    """`workdir`, talking to a server: `workdir_at(server, **credentials)`."""

    def at(server: AuthServer, **env: str) -> Path:
        as_user(monkeypatch, server.url, **env)
        return workdir

    return at


def assert_one_refusal(result, status: int) -> str:
    """Exit 1 and one `error:` line that names the status and every variable to set; returns that line."""
    assert result.exit_code == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f" {status} " in errors[0] and all(v in errors[0] for v in VARIABLES), errors[0]
    assert "tracking server is running" not in errors[0]  # a refusal is not an outage
    assert "RUN_ID" not in result.values
    return errors[0]


def test_missing_or_wrong_credentials_fail_with_one_message(basic: AuthServer, workdir_at, monkeypatch, capsys) -> None:
    import mlflow
    import typer

    from champion.registry import tracking
    from champion.cli import _guard
    from champion.errors import RegistryError

    workdir = workdir_at(basic)
    line = assert_one_refusal(invoke("run", *QUICK), 401)
    assert "no credentials are set" in line and "the server said: 'You are not authenticated." in line
    as_user(monkeypatch, basic.url, MLFLOW_TRACKING_USERNAME=EDITOR, MLFLOW_TRACKING_PASSWORD="not-the-password")
    line = assert_one_refusal(invoke("run", *QUICK), 401)
    assert f"basic auth as user {EDITOR!r}" in line and "not-the-password" not in line
    as_user(monkeypatch, basic.url, MLFLOW_TRACKING_USERNAME=EDITOR)  # half of basic auth: MLflow sends nothing
    assert "MLFLOW_TRACKING_PASSWORD is not" in assert_one_refusal(invoke("run", *QUICK), 401)
    # An artefact download is refused as requests' HTTPError, not an MlflowException: the same message.
    mlflow.set_tracking_uri(basic.url)
    with pytest.raises(RegistryError, match="401 Unauthorized.*MLFLOW_TRACKING_TOKEN"):
        with tracking.registry_errors("download an artefact"):
            mlflow.artifacts.download_artifacts(artifact_uri="mlflow-artifacts:/0/x.txt", dst_path=str(workdir))

    # Refused outside any registry_errors (a token expiring mid-step): the CLI still says it in one line.
    with pytest.raises(typer.Exit) as exited:
        _guard(lambda: len(mlflow.MlflowClient().search_experiments()))
    assert exited.value.exit_code == 1
    assert_one_refusal(CliResult(1, {}, "", capsys.readouterr().err), 401)

    assert not (workdir / "mlflow.db").exists()
    as_user(monkeypatch, basic.url, **admin_env(basic.url))
    c = admin_client(basic.url)
    assert c.search_runs([c.get_experiment_by_name("champion").experiment_id]) == []  # nothing started
    assert c.search_model_versions(f"name = '{NAME}'") == []  # nothing registered


def test_an_edit_user_runs_the_whole_pipeline(basic: AuthServer, workdir_at, monkeypatch) -> None:
    from champion.registry import history

    workdir = workdir_at(basic, MLFLOW_TRACKING_USERNAME=EDITOR, MLFLOW_TRACKING_PASSWORD=EDITOR_PASSWORD)
    result = invoke("run", *QUICK)
    assert result.exit_code == 0, result.stderr
    assert result.values["RESULT"] == "passed" and result.values["GATE2_RESULT"] == "passed"
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()
    import mlflow

    as_user(monkeypatch, basic.url, **admin_env(basic.url))
    mlflow.set_tracking_uri(basic.url)
    c = admin_client(basic.url)
    assert c.get_registered_model(NAME).aliases == {"champion": "1"}
    assert c.get_registered_model(f"{NAME}-onnx").aliases == {"deploy": "1"}
    assert any(p.name == "model.onnx" for p in (basic.root / "artifacts").rglob("*"))  # uploaded through the server
    # The history names the user the server authenticated.
    assert {(e.who, e.who_source) for e in history.events(NAME)} == {(EDITOR, "mlflow server")}


def test_a_read_only_user_cannot_promote_and_nothing_is_registered(basic: AuthServer, workdir_at, monkeypatch) -> None:
    # The editor trains a candidate for `digits-ro`, a registered model the reader may only read.
    workdir_at(basic, MLFLOW_TRACKING_USERNAME=EDITOR, MLFLOW_TRACKING_PASSWORD=EDITOR_PASSWORD)
    trained = invoke("train", *QUICK, "--set", "model.name=digits-ro")
    assert trained.exit_code == 0, trained.stderr
    run_id = trained.values["RUN_ID"]

    as_user(monkeypatch, basic.url, MLFLOW_TRACKING_USERNAME=READER, MLFLOW_TRACKING_PASSWORD=READER_PASSWORD)
    line = assert_one_refusal(invoke("promote", "--run-id", run_id, "--quiet"), 403)
    assert "403 Forbidden (the server said: 'Permission denied')" in line and f"user {READER!r}" in line
    assert "EDIT permission" in line

    as_user(monkeypatch, basic.url, **admin_env(basic.url))
    c = admin_client(basic.url)
    assert c.search_model_versions("name = 'digits-ro'") == [] and c.get_registered_model("digits-ro").aliases == {}
    assert "gate1.result" not in c.get_run(run_id).data.tags


def test_an_api_key_alone_runs_the_pipeline_and_goes_with_every_request(keyed: AuthServer, workdir_at) -> None:
    from champion.registry.auth import LEGACY_API_KEY_ENV

    workdir = workdir_at(keyed, **{LEGACY_API_KEY_ENV: API_KEY})  # the seeds' name for the key
    keyed.forget_requests()
    result = invoke("run", *QUICK)
    assert result.exit_code == 0, result.stderr
    assert result.values["RESULT"] == "passed" and result.values["GATE2_RESULT"] == "passed"
    # Using the shipped model from the terminal goes through the same server, with the same key.
    image_folder(workdir / "labelled", classes=("0", "1"), size=28, per_class=2)
    predicted = invoke("predict", str(workdir / "labelled"), "--quiet")
    evaluated = invoke("evaluate", str(workdir / "labelled"), "--quiet")
    assert predicted.exit_code == 0 and len(predicted.stdout.splitlines()) == 5, predicted.stderr
    assert evaluated.exit_code == 0 and evaluated.values["IMAGES"] == "4", evaluated.stderr

    judged = keyed.requests_judged()
    assert judged and all(r["key"] == "yes" and r["bearer"] == "no" for r in judged), [r for r in judged if r["key"] != "yes"]
    # Every request the server received went through the key check, artefact uploads and downloads
    # included; only MLflow's public routes (health, server-info) are answered without one.
    received = collections.Counter(keyed.requests_received())
    checked = collections.Counter((r["method"], r["path"]) for r in judged)
    public = {k for k in received if k[1] == "/health" or k[1].endswith("/server-info")}
    assert {k: n for k, n in received.items() if k not in public and checked[k] < n} == {}
    artefacts = "/api/2.0/mlflow-artifacts/artifacts/"
    assert any(m == "PUT" and p.startswith(artefacts) and p.endswith("model.onnx") for m, p in received)
    assert any(m == "GET" and p.startswith(artefacts) for m, p in received)
    assert ("POST", "/api/2.0/mlflow/model-versions/create") in received


def test_a_bearer_token_works_and_a_wrong_key_is_refused(keyed: AuthServer, workdir_at, monkeypatch) -> None:
    workdir_at(keyed, MLFLOW_TRACKING_TOKEN=TOKEN)
    keyed.forget_requests()
    listed = invoke("models", "list")
    assert listed.exit_code == 0, listed.stderr
    judged = keyed.requests_judged()
    assert judged and all(r["bearer"] == "yes" and r["key"] == "no" for r in judged)

    as_user(monkeypatch, keyed.url, CHAMPION_API_KEY="not-the-key")
    line = assert_one_refusal(invoke("models", "list"), 401)
    assert f"an API key in header {KEY_HEADER}" in line and "not-the-key" not in line


def test_a_promotion_refused_after_registering_withdraws_the_version(keyed: AuthServer, workdir_at, monkeypatch) -> None:
    """A gateway that lets a key register versions but not move aliases: the version is deleted again."""
    workdir_at(keyed, CHAMPION_API_KEY=LIMITED_KEY)
    trained = invoke("train", *QUICK, "--set", "model.name=digits-undo")
    assert trained.exit_code == 0, trained.stderr
    line = assert_one_refusal(invoke("promote", "--run-id", trained.values["RUN_ID"], "--quiet"), 403)
    assert "v1 of 'digits-undo' was registered before the refusal and has been deleted" in line, line

    as_user(monkeypatch, keyed.url, CHAMPION_API_KEY=API_KEY)
    c = admin_client(keyed.url)
    assert c.search_model_versions("name = 'digits-undo'") == [] and c.get_registered_model("digits-undo").aliases == {}
    assert "gate1.result" not in c.get_run(trained.values["RUN_ID"]).data.tags


class _Recorder(BaseHTTPRequestHandler):
    """A plain HTTP server that answers any GET as MLflow's artefact endpoint would, recording the
    credentials it got; a port in `redirect_to` answers every GET with a redirect to that base URL."""

    seen: list[tuple[int, str | None, str | None]] = []  # (port, API key, Authorization)
    redirect_to: dict[int, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        port = self.server.server_port
        _Recorder.seen.append((port, self.headers.get(KEY_HEADER), self.headers.get("Authorization")))
        if port in _Recorder.redirect_to:
            self.send_response(302)
            self.send_header("Location", _Recorder.redirect_to[port] + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"files": []}).encode() if "?path=" in self.path else b"weights"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def recorders(n: int) -> Iterator[list[str]]:
    """`n` recording HTTP servers on loopback; yields their base URLs."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Recorder) for _ in range(n)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    _Recorder.seen.clear()
    _Recorder.redirect_to.clear()
    try:
        yield [f"http://127.0.0.1:{s.server_port}" for s in servers]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def seen_by(url: str) -> set[tuple[str | None, str | None]]:
    """(API key, Authorization) pairs the recorder at `url` received."""
    port = int(url.rsplit(":", 1)[1])
    return {(key, authorization) for p, key, authorization in _Recorder.seen if p == port}


def download(host: str, workdir: Path) -> None:
    import mlflow

    mlflow.artifacts.download_artifacts(
        artifact_uri=f"{host}/api/2.0/mlflow-artifacts/artifacts/0/model.bin", dst_path=str(workdir)
    )


def test_the_key_goes_only_to_the_tracking_server(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An artefact on another host (a model whose files live elsewhere) is fetched without the key."""
    from champion.registry.tracking import setup_tracking

    with recorders(2) as (tracking_host, other_host):
        as_user(monkeypatch, tracking_host, CHAMPION_API_KEY=API_KEY)
        setup_tracking()
        for host in (other_host, tracking_host):
            download(host, workdir)
    assert seen_by(other_host) == {(None, None)} and seen_by(tracking_host) == {(API_KEY, None)}


BASIC = "Basic " + base64.b64encode(f"{EDITOR}:{EDITOR_PASSWORD}".encode()).decode()


@pytest.mark.parametrize(
    ("env", "sent"),
    [
        ({"CHAMPION_API_KEY": API_KEY}, (API_KEY, None)),
        ({"MLFLOW_TRACKING_USERNAME": EDITOR, "MLFLOW_TRACKING_PASSWORD": EDITOR_PASSWORD}, (None, BASIC)),
        ({"MLFLOW_TRACKING_TOKEN": TOKEN}, (None, f"Bearer {TOKEN}")),
    ],
    ids=["api-key", "basic", "bearer"],
)
def test_no_credential_follows_a_redirect_to_another_origin(
    env: dict[str, str], sent: tuple[str | None, str | None], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracking server redirects a download to another origin (the same host, another port):
    the credential reaches the tracking server and nothing of it the other origin."""
    from champion.registry.tracking import setup_tracking

    with recorders(2) as (tracking_host, other_host):
        _Recorder.redirect_to[int(tracking_host.rsplit(":", 1)[1])] = other_host
        as_user(monkeypatch, tracking_host, **env)
        setup_tracking()
        download(tracking_host, workdir)
    assert seen_by(tracking_host) == {sent}
    assert seen_by(other_host) == {(None, None)}


@pytest.mark.parametrize(
    ("url", "tracking_uri", "sent"),
    [
        ("http://mlflow.example:5000", "http://MLflow.example:5000/prefix", True),
        ("https://mlflow.example", "https://mlflow.example:443", True),
        ("http://mlflow.example:5001", "http://mlflow.example:5000", False),  # another port: another service
        ("http://mlflow.example", "https://mlflow.example", False),  # never downgraded to plain HTTP
        ("http://mlflow.example.evil", "http://mlflow.example", False),
        ("http://mlflow.example:5000", "sqlite:///mlflow.db", False),
        (None, "http://mlflow.example", False),
    ],
)
def test_the_host_rule(url: str | None, tracking_uri: str, sent: bool) -> None:
    from champion.registry.auth import is_tracking_server

    assert is_tracking_server(url, tracking_uri) is sent


def test_an_object_stores_refusal_is_not_read_as_the_servers() -> None:
    """MLflow maps S3's AccessDenied to the same error code as a server's 403, raised while handling
    botocore's error: that is the storage credentials' problem, not the tracking server's."""
    from botocore.exceptions import ClientError
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.s3_artifact_repo import BOTO_TO_MLFLOW_ERROR

    from champion.registry.auth import Refusal, refusal

    try:
        try:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2")
        except ClientError:  # as mlflow.store.artifact.s3_artifact_repo does it
            raise MlflowException("Access Denied", error_code=BOTO_TO_MLFLOW_ERROR["AccessDenied"])  # noqa: B904
    except MlflowException as exc:
        assert refusal(exc) is None
    assert refusal(MlflowException("Access Denied", error_code=BOTO_TO_MLFLOW_ERROR["AccessDenied"])) == Refusal(403, "Access Denied")


def test_header_name_and_key_are_checked_before_any_request(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from champion.registry import auth

    monkeypatch.setenv("CHAMPION_API_KEY", "k")
    monkeypatch.setenv("AM_SC_API_KEY", "seed-key")
    monkeypatch.setenv("CHAMPION_API_KEY_HEADER", "X-Team-Key")
    assert auth.api_key() == "k" and auth.api_key_header() == "X-Team-Key"  # CHAMPION_API_KEY first
    for bad in ("X Api Key", "Authorization"):
        monkeypatch.setenv("CHAMPION_API_KEY_HEADER", bad)
        result = invoke("runs")
        assert result.exit_code == 2 and "CHAMPION_API_KEY_HEADER" in result.stderr, result.stderr
    monkeypatch.setenv("CHAMPION_API_KEY_HEADER", "X-Team-Key")
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "kubernetes")  # another auth provider would not send the key
    result = invoke("runs")
    assert result.exit_code == 2 and "MLFLOW_TRACKING_AUTH='kubernetes'" in result.stderr, result.stderr
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    monkeypatch.delenv("CHAMPION_API_KEY_HEADER")
    monkeypatch.setenv("CHAMPION_API_KEY", "k\n")
    result = invoke("runs")
    assert result.exit_code == 2 and "CHAMPION_API_KEY holds a control character" in result.stderr, result.stderr
