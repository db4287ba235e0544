"""The team set-up: a real `mlflow server` on loopback (SQLite backend, proxied artefacts), then an outage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from servers import MlflowServer

pytestmark = pytest.mark.slow


def test_pipeline_against_a_server_and_an_outage(tmp_path: Path) -> None:
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "artifacts"), workers=None)
    url = server.url
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}  # fmt: skip
    champion = str(Path(sys.executable).with_name("champion"))
    with server:
        run = subprocess.run([champion, "run", "--quiet", "--epochs", "2"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr
        values = dict(line.split("=", 1) for line in run.stdout.splitlines())  # stdout holds only KEY=value
        assert values["RESULT"] == "passed" and values["GATE2_RESULT"] == "passed"
        assert not (tmp_path / "mlflow.db").exists()  # everything went to the server
        assert any((tmp_path / "artifacts").rglob("model.onnx"))  # artefacts proxied to the server's store
        # The policy and the event history live on the server too (registered-model tag, event runs).
        import mlflow

        from champion.registry import history, policy

        previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(url)
        try:
            found = history.events("digits-cnn")
            assert [e.reason for e in found] == [history.GATE1_PASSED, history.POLICY_STORED, history.GATE2_PASSED]
            # No authentication on this server: the OS user acts, and `when` is on the server's clock.
            assert all(e.who_source == "os user" and e.who and e.host for e in found)
            assert found[-1].when_ms <= mlflow.MlflowClient().get_registered_model("digits-cnn-onnx").last_updated_timestamp
            assert policy.stored("digits-cnn").promotion_criteria.threshold == 0.9
        finally:
            mlflow.set_tracking_uri(previous_uri)
        # Searching runs through the server: a malformed filter is a usage error with the server's message.
        found = subprocess.run([champion, "runs", "--json", "--filter", "tags.gate1.result = 'passed'"], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert found.returncode == 0 and [json.loads(x)["run_id"] for x in found.stdout.splitlines()] == [values["RUN_ID"]]
        bad = subprocess.run([champion, "runs", "--filter", "metrics.x >>> 1"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert bad.returncode == 2 and "--filter" in bad.stderr, bad.stdout + bad.stderr

    # The server is gone: promoting must be an error that names the server, never "no champion".
    promote = subprocess.run([champion, "promote", "--run-id", values["RUN_ID"], "--quiet"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert promote.returncode == 1, promote.stdout + promote.stderr
    assert url in promote.stderr and "RESULT" not in promote.stdout
