"""Workflow mode (CHAMPION_WORKFLOW_MODE=1): rejections exit 0, a server that could not be reached
exits 75 (what the retryStrategy retries), every other failure keeps its code."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from champion.errors import EXIT_TRANSIENT, ChampionError, ConfigError, DataError, RegistryError
from champion.workflow import mode
from servers import free_port


def raised(outer: type[BaseException], inner: BaseException, via_context: bool = False) -> BaseException:
    """`outer` raised from `inner` (as `raise ... from`), or while handling it (MLflow's REST client)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            if via_context:
                raise outer("wrapped")  # noqa: B904 - the implicit __context__ is what is tested
            raise outer("wrapped") from exc
    except BaseException as exc:  # noqa: BLE001 - returned for inspection
        return exc


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (raised(RegistryError, raised(RuntimeError, requests.exceptions.ConnectionError("refused"), via_context=True)), True),
        (raised(RegistryError, requests.exceptions.ReadTimeout("slow")), True),
        (raised(RegistryError, requests.exceptions.RetryError("too many 503 error responses")), True),
        (ConnectionRefusedError(111, "refused"), True),
        (raised(DataError, TimeoutError("mirror timed out")), True),
        (raised(RegistryError, requests.exceptions.HTTPError("404 Client Error")), False),  # an answer, not an outage
        (raised(RegistryError, ValueError("RESOURCE_DOES_NOT_EXIST")), False),
        (DataError("3 unreadable images"), False),
        (ConfigError("unknown key"), False),
    ],
)
def test_transient_means_a_server_was_not_reached(exc: BaseException, transient: bool) -> None:
    assert mode.is_transient(exc) is transient


def test_exit_codes_change_only_in_workflow_mode() -> None:
    assert mode.success_code(3, workflow=True) == 0 and mode.success_code(4, workflow=True) == 0
    assert mode.success_code(3, workflow=False) == 3 and mode.success_code(1, workflow=True) == 1
    outage = raised(RegistryError, ConnectionResetError())
    assert mode.failure_code(outage, 1, workflow=True) == EXIT_TRANSIENT == 75
    assert mode.failure_code(outage, 1, workflow=False) == 1
    assert mode.failure_code(ChampionError("no such run"), 1, workflow=True) == 1
    assert mode.failure_code(ConfigError("bad"), 2, workflow=True) == 2


def test_a_command_that_cannot_reach_the_server_exits_75_in_workflow_mode(workdir: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    plain = cli("runs", "--experiment", "x")
    assert plain.exit_code == 1 and "MLflow could not" in plain.stderr
    monkeypatch.setenv(mode.MODE_ENV, "1")
    in_workflow = cli("runs", "--experiment", "x")
    assert in_workflow.exit_code == 75 and "retries this step" in in_workflow.stderr, in_workflow.stderr
    monkeypatch.setenv(mode.MODE_ENV, "perhaps")
    typo = cli("runs", "--experiment", "x")
    assert typo.exit_code == 2 and "CHAMPION_WORKFLOW_MODE='perhaps'" in typo.stderr


def test_mode_and_step_variables_cannot_collide_with_config_variables() -> None:
    for name in (mode.MODE_ENV, mode.STEP_ENV):
        assert name.startswith("CHAMPION_") and "__" not in name
