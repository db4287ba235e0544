"""The tracking server goes away in the middle of training: a real `mlflow server` killed and started again.

Shorter than MLflow's retry budget (10 s): the run finishes with every epoch's metrics, and both
gates pass on the same server afterwards. Longer than a (shrunk) budget: the command fails naming
the server, nothing is registered, the run's end is recorded once the server answers again, and
`champion train --resume` continues the same run with no epoch lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import invoke
from servers import MlflowServer

pytestmark = pytest.mark.slow

EPOCHS = 6
EPOCH_KEYS = ("train_loss", "val_loss", "val_accuracy", "best_val_accuracy", "epoch_time", "learning_rate")
# Enough epochs that training is still going when the server is killed after the first one.
TRAIN = ["--quiet", "--set", f"training.epochs={EPOCHS}", "--set", "training.early_stopping.patience=100",
         "--set", "export.num_samples=20"]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One server for the module (SQLite backend, proxied artefacts); the tests kill and restart it."""
    root = tmp_path_factory.mktemp("outage-server")
    srv = MlflowServer(f"sqlite:///{root / 'server.db'}", str(root / "artifacts"), log=root / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def env(tmp_path: Path, server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment of the champion processes, also set here for in-process commands."""
    import mlflow

    if server.proc is None or server.proc.poll() is not None:  # a failed test left it stopped
        server.start()
    monkeypatch.chdir(tmp_path)
    values = {"MLFLOW_TRACKING_URI": server.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for key in [k for k in os.environ if k.startswith("CHAMPION_") or k.startswith("MLFLOW_HTTP_REQUEST_")]:
        monkeypatch.delenv(key)  # MLflow's own retry defaults, unless a test sets them
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    yield {**os.environ}
    mlflow.set_tracking_uri(None)  # in-process commands pointed MLflow at this server: not the next tests


def champion(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("champion")
    return subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_epoch_done(cwd: Path, proc: subprocess.Popen, timeout: float = 180) -> str:
    """Wait until the first epoch's checkpoint is written (training goes on); the run id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        found = list(cwd.glob("checkpoints/*/last.ckpt"))
        if found:
            return found[0].parent.name
        time.sleep(0.05)
    raise AssertionError("training never finished its first epoch")


def client(url: str):
    import mlflow

    mlflow.set_tracking_uri(url)
    return mlflow.MlflowClient()


def assert_every_epoch_logged(c, run_id: str) -> None:
    for key in EPOCH_KEYS:
        assert [m.step for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)] == list(range(EPOCHS)), key


def test_server_away_for_10_seconds_during_training(tmp_path: Path, server: MlflowServer, env: dict[str, str]) -> None:
    names = ["--set", "experiment=outage-short", "--set", "model.name=short-cnn"]
    proc = champion(["run", *TRAIN, *names], tmp_path, env)
    run_id = first_epoch_done(tmp_path, proc)
    server.kill()
    down, t0 = time.time(), time.monotonic()
    time.sleep(10)  # the outage itself
    assert proc.poll() is None, f"training ended while the server was away: {proc.communicate()}"
    server.start()
    up = time.time()
    out, err = proc.communicate(timeout=600)

    assert proc.returncode == 0, err
    values = dict(line.split("=", 1) for line in out.splitlines())
    assert values["RUN_ID"] == run_id and values["RESULT"] == "passed" and values["GATE2_RESULT"] == "passed"
    assert time.monotonic() - t0 >= 10
    c = client(server.url)
    assert c.get_run(run_id).info.status == "FINISHED"
    assert_every_epoch_logged(c, run_id)
    # Training did not wait for the server: epochs finished (their metrics stamped) while it was away.
    stamps = [m.timestamp / 1000 for m in c.get_metric_history(run_id, "val_accuracy")]
    assert any(down < t < up for t in stamps), (down, up, stamps)
    assert c.get_registered_model("short-cnn").aliases["champion"] == values["MODEL_VERSION"]
    assert c.get_registered_model("short-cnn-onnx").aliases["deploy"] == values["ONNX_MODEL_VERSION"]


def test_server_away_longer_than_the_retry_budget(tmp_path: Path, server: MlflowServer, env: dict[str, str]) -> None:
    names = ["--set", "experiment=outage-long", "--set", "model.name=long-cnn"]
    # A budget of one quick retry: the outage below outlasts it at once.
    brief = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    proc = champion(["run", *TRAIN, *names], tmp_path, brief)
    run_id = first_epoch_done(tmp_path, proc)
    server.kill()
    killed_ms = int(time.time() * 1000)
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and server.url in errors[0], err
    assert "RESULT" not in out
    journal = list((tmp_path / "cache" / "champion" / "unclosed-runs").glob("*.json"))
    assert [p.stem for p in journal] == [run_id], err
    assert json.loads(journal[0].read_text())["status"] == "FAILED"
    assert f"champion train --resume --run-id {run_id}" in err

    server.start()
    c = client(server.url)
    assert c.search_registered_models(filter_string="name LIKE 'long-cnn%'") == []  # the registry is untouched
    assert c.get_run(run_id).info.status == "RUNNING"  # nobody could record the end yet

    # The next command here that reaches the server records the end, at the time the run stopped.
    before_ms = int(time.time() * 1000)
    listed = invoke("runs", "--json", "--experiment", "outage-long")
    assert listed.exit_code == 0, listed.stderr
    assert [json.loads(line)["status"] for line in listed.stdout.splitlines()] == ["FAILED"]
    assert not journal[0].exists()
    info = c.get_run(run_id).info
    assert info.status == "FAILED" and killed_ms <= info.end_time <= before_ms

    resumed = invoke("train", "--resume", *TRAIN, *names)
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.values["RUN_ID"] == run_id
    assert c.get_run(run_id).info.status == "FINISHED"
    assert_every_epoch_logged(c, run_id)  # including epochs trained while the server was away
    promoted = invoke("promote", "--run-id", run_id, "--quiet")
    assert promoted.exit_code == 0 and promoted.values["RESULT"] == "passed", promoted.stderr
