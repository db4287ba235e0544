"""The registry's history: every alias move is an event, rollback walks back through it, runs are searchable.

Real SQLite-backed MLflow, real training on digits (1 epoch, trained once for the module), real ORT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from conftest import invoke, module_workdir
from servers import free_port

pytestmark = pytest.mark.slow
NAME = "hist-cnn"
ONNX = f"{NAME}-onnx"
# Every candidate passes (no threshold, no required gain): cheap promotions of 1-epoch runs.
LAX = ["--set", "promotion_criteria.threshold=0.0", "--set", "promotion_criteria.min_improvement=0.0", "--set", "export.num_samples=10"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with module_workdir(tmp_path_factory, "history") as root:
        yield root


@pytest.fixture(scope="module")
def runs(store: Path) -> list[str]:
    """Four 1-epoch runs: the first three promoted in turn (v1, v2, v3), the fourth never judged."""
    ids = []
    for _ in range(4):
        trained = invoke("train", "--quiet", "--epochs", "1", "--set", f"model.name={NAME}", *LAX)
        assert trained.exit_code == 0, trained.stderr
        ids.append(trained.values["RUN_ID"])
    for i, run_id in enumerate(ids[:3], start=1):
        promoted = invoke("promote", "--run-id", run_id, "--quiet")
        assert promoted.exit_code == 0 and promoted.values["MODEL_VERSION"] == str(i), promoted.stderr
    return ids


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def aliases(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client().get_registered_model(name).aliases.items()}


def registry_state() -> tuple:
    from champion.registry import history

    onnx = aliases(ONNX) if client().search_registered_models(f"name = '{ONNX}'") else {}
    return aliases(NAME), onnx, len(history.events(NAME))


def test_promotions_are_events_with_store_time_who_and_report(store: Path, runs: list[str]) -> None:
    from champion.registry import history

    moves = history.events(NAME, alias="champion")
    assert [(e.reason, e.from_version, e.to_version) for e in moves] == [
        ("gate1 passed", None, "1"), ("gate1 passed", "1", "2"), ("gate1 passed", "2", "3"),
    ]  # fmt: skip
    assert [e.report for e in moves] == [f"runs:/{r}/gate_report.json" for r in runs[:3]]
    assert all(e.who and e.who_source == "os user" and e.host for e in moves)
    # `when` is the registered model's last_updated_timestamp, stamped by the store after the move.
    assert [e.when_ms for e in moves] == sorted(e.when_ms for e in moves)
    assert client().get_registered_model(NAME).last_updated_timestamp >= moves[-1].when_ms
    prev = history.events(NAME, alias="previous_champion")
    assert [(e.from_version, e.to_version) for e in prev] == [(None, "1"), ("1", "2")]
    assert aliases(NAME) == {"champion": "3", "previous_champion": "2"}
    # The first promotion stored the policy: an event without an alias.
    assert [e.reason for e in history.events(NAME) if e.alias is None] == ["policy stored"]


def test_rollback_of_champion_walks_back_through_the_history(store: Path, runs: list[str]) -> None:
    from champion.registry import history

    first = invoke("models", "rollback", NAME, "--alias", "champion")
    assert first.exit_code == 0, first.stderr
    assert first.values["MODEL_VERSION"] == "2"
    assert aliases(NAME) == {"champion": "2", "previous_champion": "1"}
    tags = client().get_model_version(NAME, "3").tags
    assert tags["rolled_back"] == "true" and tags["rolled_back.alias"] == "champion" and tags["rolled_back.when"]

    second = invoke("models", "rollback", NAME, "--alias", "champion")  # further back, not back to v3
    assert second.exit_code == 0 and second.values["MODEL_VERSION"] == "1", second.stderr
    assert aliases(NAME) == {"champion": "1"}  # no holder before v1: previous_champion is removed

    moves = [(e.reason, e.from_version, e.to_version) for e in history.events(NAME, alias="champion")]
    assert moves[3:] == [("rollback", "3", "2"), ("rollback", "2", "1")]
    rolled = history.events(NAME, alias="champion")[-1]
    assert rolled.report == f"runs:/{runs[0]}/gate_report.json"  # the report that qualified v1

    shown = invoke("models", "history", NAME, "--alias", "champion")
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.count("rollback") == 2 and shown.stdout.count("gate1 passed") == 3

    before = registry_state()
    third = invoke("models", "rollback", NAME, "--alias", "champion")
    assert third.exit_code == 1 and "no earlier holder" in third.stderr, third.stdout + third.stderr
    assert "MODEL_VERSION" not in third.values and registry_state() == before


def test_rollback_refuses_what_it_cannot_do_and_moves_nothing(store: Path, runs: list[str]) -> None:
    import mlflow

    # A version registered by hand never passed Gate 1: @champion may not move to it.
    manual = mlflow.register_model(client().get_run(runs[3]).data.tags["model_uri"], NAME)
    before = registry_state()
    cases = {
        ("--alias", "champion", "--to", str(manual.version)): (1, "never passed"),
        ("--alias", "champion", "--to", "99"): (1, "has no version 99"),
        ("--alias", "champion", "--to", "abc"): (2, "a version number"),
        ("--alias", "champion", "--to", "1"): (1, "already holds"),
        ("--alias", "previous_champion"): (2, "rollback moves champion or deploy"),
        ("--alias", "deploy"): (1, f"no registered model '{ONNX}'"),  # nothing was ever validated
    }
    for args, (code, message) in cases.items():
        result = invoke("models", "rollback", NAME, *args)
        assert result.exit_code == code and message in result.stderr, (args, result.stdout + result.stderr)
        assert registry_state() == before, args
    unknown = invoke("models", "rollback", "no-such-model", "--alias", "champion")
    assert unknown.exit_code == 1 and "no registered model 'no-such-model'" in unknown.stderr
    assert invoke("models", "history", "no-such-model").exit_code == 1

    # An alias moved outside champion (no history to walk): refused, with the way out.
    c = client()
    c.create_registered_model("hand-made")
    v = mlflow.register_model(c.get_run(runs[3]).data.tags["model_uri"], "hand-made", tags={"gate1.result": "passed"})
    c.set_registered_model_alias("hand-made", "champion", v.version)
    result = invoke("models", "rollback", "hand-made", "--alias", "champion")
    assert result.exit_code == 1 and "moved outside champion" in result.stderr and "--to" in result.stderr
    assert aliases("hand-made") == {"champion": str(v.version)}


def test_rollback_of_deploy(store: Path, runs: list[str]) -> None:
    import mlflow

    from champion.registry import history

    for args in (["--version", "2"], ["--alias", "champion"]):  # v2 (a rollback export), then the champion v1
        exported = invoke("export", "--model-name", NAME, "--quiet", *args)
        assert exported.exit_code == 0, exported.stderr
        validated = invoke("validate", "--export-run-id", exported.values["EXPORT_RUN_ID"], "--quiet")
        assert validated.exit_code == 0, validated.stderr
    assert aliases(ONNX) == {"deploy": "2"}
    served = invoke("deploy", "triton", "--model-name", NAME, "--repository", str(store / "triton"), "--quiet")
    assert served.exit_code == 0 and served.values["TRITON_MODEL_VERSION"] == "2", served.stderr
    moves = history.events(NAME, alias="deploy")
    assert [(e.reason, e.registered_model, e.from_version, e.to_version) for e in moves] == [
        ("gate2 passed", ONNX, None, "1"), ("gate2 passed", ONNX, "1", "2"),
    ]  # fmt: skip
    assert moves[0].report_path == "validation_report.json" and moves[0].details["export_reason"] == "rollback"

    # An ONNX version registered by hand never passed Gate 2: @deploy may not move to it.
    unvalidated = mlflow.register_model(client().get_model_version(ONNX, "1").source, ONNX)
    before = registry_state()
    refused = invoke("models", "rollback", ONNX, "--to", str(unvalidated.version))
    assert refused.exit_code == 1 and "gate2.result=passed" in refused.stderr, refused.stderr
    assert registry_state() == before

    rolled = invoke("models", "rollback", NAME)  # default alias: deploy, on <name>-onnx
    assert rolled.exit_code == 0 and rolled.values["MODEL_VERSION"] == "1", rolled.stderr
    assert aliases(ONNX) == {"deploy": "1"}
    assert client().get_model_version(ONNX, "2").tags["rolled_back"] == "true"
    assert history.events(NAME, alias="deploy")[-1].reason == "rollback"
    # What Triton serves follows @deploy: the config now names v1 only.
    served = invoke("deploy", "triton", "--model-name", NAME, "--repository", str(store / "triton"), "--quiet")
    assert served.exit_code == 0 and served.values["TRITON_MODEL_VERSION"] == "1", served.stderr
    config = (store / "triton" / NAME / "config.pbtxt").read_text()
    assert "version_policy: { specific: { versions: [ 1 ] } }" in config, config
    wrong = invoke("models", "rollback", ONNX, "--alias", "champion")  # @champion is not on <name>-onnx
    assert wrong.exit_code == 2 and f"models rollback {NAME} --alias champion" in wrong.stderr, wrong.stderr
    again = invoke("models", "rollback", ONNX)  # -onnx accepted; v1 was the first holder
    assert again.exit_code == 1 and "no earlier holder" in again.stderr
    assert aliases(ONNX) == {"deploy": "1"}

    listed = invoke("models")
    assert listed.exit_code == 0, listed.stderr
    assert NAME in listed.stdout and "@deploy" in listed.stdout
    from champion.registry.history import overview

    rows = {(r["model"], r["version"]): r for r in overview()}
    assert rows[(NAME, "1")]["aliases"] == ["champion"] and rows[(NAME, "1")]["gate1"] == "passed"
    assert rows[(ONNX, "2")]["rolled_back"] and rows[(ONNX, "1")]["gate2"] == "passed"
    assert rows[(NAME, "1")]["metric"].startswith("best_val_accuracy=") and rows[(NAME, "1")]["data_digest"]


def test_policy_changes_are_events_too(store: Path, runs: list[str]) -> None:
    from champion.registry import history

    changed = invoke("models", "policy", NAME, "--set", "export.num_samples=12")
    assert changed.exit_code == 0, changed.stderr
    event = history.events(NAME)[-1]
    assert event.reason == "policy changed" and event.alias is None and event.registered_model == NAME
    assert event.details["changed"] == {"export.num_samples": [10, 12]}

    # A run someone else put in the audit experiment, unreadable as an event, does not break the history.
    c = client()
    stray = c.create_run(c.get_experiment_by_name(history.EVENTS_EXPERIMENT).experiment_id, tags={"model": NAME})
    c.log_param(stray.info.run_id, "schema", history.SCHEMA)
    c.log_param(stray.info.run_id, "detail.x", "{not json")
    assert history.events(NAME)[-1] == event
    assert invoke("models", "history", NAME).exit_code == 0


def test_runs_search_with_mlflows_filter(store: Path, runs: list[str]) -> None:
    found = invoke("runs", "--filter", "metrics.best_val_accuracy >= 0 and tags.gate1.result = 'passed'", "--json")
    assert found.exit_code == 0, found.stderr
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert sorted(r["run_id"] for r in rows) == sorted(runs[:3])  # not the fourth, never judged
    row = rows[0]
    assert row["status"] == "FINISHED" and row["run_name"] == NAME and row["start_time"].endswith("Z")
    assert "best_val_accuracy" in row["metrics"] and row["tags"]["gate1.result"] == "passed"

    top = invoke("runs", "--order-by", "attributes.start_time ASC", "--max", "1", "--json")
    assert [json.loads(line)["run_id"] for line in top.stdout.splitlines()] == [runs[0]]

    table = invoke("runs", "--filter", "tags.gate1.result = 'passed'")
    assert table.exit_code == 0, table.stderr
    lines = [line.split("\t") for line in table.stdout.splitlines()]  # piped: tab-separated, a header first
    assert lines[0][0] == "run id" and sorted(line[0] for line in lines[1:]) == sorted(runs[:3])

    bad = invoke("runs", "--filter", "metrics.test_accuracy >>> 0.99")
    assert bad.exit_code == 2, bad.stdout + bad.stderr
    assert "--filter" in bad.stderr and "Invalid" in bad.stderr
    missing = invoke("runs", "--experiment", "no-such-experiment")
    assert missing.exit_code == 1 and "no experiment 'no-such-experiment'" in missing.stderr


def test_who_is_never_guessed_when_the_server_is_not_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that does not answer is an error, not "the OS user did it" (and nothing is cached)."""
    from champion.registry import history

    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    for _ in range(2):
        with pytest.raises(Exception, match="127.0.0.1"):
            history._who(closed)


def test_who_falls_back_only_on_an_answer_that_names_no_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """404 (no authentication) or a proxy's page: the fallbacks. A server error: an error, never a guess."""
    import http.server
    import threading

    from champion.registry import history
    from champion.workflow import mode

    answers = {"/nouser": (404, b"not found"), "/proxy": (200, b"<html>login</html>"), "/broken": (503, b"down"),
               "/auth": (200, b'{"user": {"username": "alice"}}')}  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers["/" + self.path.split("/")[1]]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "from-the-environment")
    try:
        assert history._who(f"{base}/auth") == ("alice", "mlflow server")
        assert history._who(f"{base}/nouser") == ("from-the-environment", "MLFLOW_TRACKING_USERNAME")
        assert history._who(f"{base}/proxy") == ("from-the-environment", "MLFLOW_TRACKING_USERNAME")
        with pytest.raises(Exception, match="Max retries exceeded") as err:  # MLflow's retries of a 5xx, exhausted
            history._who(f"{base}/broken")
        assert mode.is_transient(err.value)  # a workflow step retries it (exit 75)
    finally:
        server.shutdown()
