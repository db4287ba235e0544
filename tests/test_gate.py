"""Quality Gate 1 rules as unit tests, and the registry-outage rule against real MLflow stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from champion.config import load_config
from champion.errors import RegistryError
from champion.stages.promote import ALL_MET, Champion, GateResult, current_champion, evaluate_criteria
from servers import free_port

METRICS = {
    "best_val_accuracy": 0.95,
    "val_accuracy_class_0": 0.97,
    "val_accuracy_class_1": 0.91,
    "model_size_mb": 1.5,
    "inference_time_ms": 2.0,
}


def decide(metrics=METRICS, champion=None, **criteria):
    cfg = load_config(overrides=[f"promotion_criteria.{k}={v}" for k, v in criteria.items()])
    rows = evaluate_criteria(cfg.promotion_criteria, metrics, champion)
    return {r.name: r.passed for r in rows}


def champ(value: float) -> Champion:
    return Champion("3", "run", value, "logged")


def test_no_champion_needs_only_the_threshold() -> None:
    assert decide() == {"threshold": True}
    assert decide(threshold=0.96) == {"threshold": False}


def test_threshold_is_a_fraction_compared_with_a_fraction() -> None:
    # The scripts we replace compared a percentage (95.0) with a fraction (0.9): always "pass".
    assert decide({**METRICS, "best_val_accuracy": 0.5}, threshold=0.9) == {"threshold": False}


def test_champion_must_be_beaten_by_min_improvement() -> None:
    assert decide(champion=champ(0.94), min_improvement=0.005)["improvement_over_champion"] is True
    assert decide(champion=champ(0.948), min_improvement=0.005)["improvement_over_champion"] is False
    assert decide(champion=champ(0.945), min_improvement=0.005)["improvement_over_champion"] is True  # exactly enough
    assert decide(champion=champ(0.96), min_improvement=0.0)["improvement_over_champion"] is False


def test_release_criteria() -> None:
    assert decide(min_per_class_accuracy=0.9)["min_per_class_accuracy"] is True
    assert decide(min_per_class_accuracy=0.92)["min_per_class_accuracy"] is False
    assert decide(max_model_size_mb=2)["max_model_size_mb"] is True
    assert decide(max_model_size_mb=1)["max_model_size_mb"] is False
    assert decide(max_inference_time_ms=2.5)["max_inference_time_ms"] is True
    assert decide(max_inference_time_ms=1.0)["max_inference_time_ms"] is False


def test_unset_release_criteria_are_not_checked() -> None:
    assert set(decide(champion=champ(0.9))) == {"threshold", "improvement_over_champion"}


def test_no_registered_model_means_no_champion(workdir: Path) -> None:
    from champion.registry.tracking import setup_tracking

    setup_tracking()
    assert current_champion("never-registered") is None


def test_registered_model_without_the_alias_means_no_champion(workdir: Path) -> None:
    from champion.registry.tracking import client, setup_tracking

    setup_tracking()
    client().create_registered_model("aliasless")  # e.g. the alias was deleted in the UI
    assert current_champion("aliasless") is None


def test_unreachable_registry_is_an_error_not_no_champion(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from champion.registry.tracking import setup_tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    setup_tracking()
    with pytest.raises(RegistryError, match="look up the champion"):
        current_champion("digits-cnn")


def test_credentials_in_the_tracking_uri_never_reach_the_output(workdir: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret-pw@127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    result = cli("promote", "--run-id", "0123456789abcdef")
    assert result.exit_code == 1 and "MLflow could not" in result.stderr, result.stderr
    assert "http://***@127.0.0.1" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout and "alice" not in result.stderr + result.stdout


def test_promote_against_unreachable_server_exits_1(workdir: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    result = cli("promote", "--run-id", "0123456789abcdef")
    assert result.exit_code == 1
    assert "MLflow could not" in result.stderr and "MLFLOW_TRACKING_URI" in result.stderr
    assert "RESULT" not in result.values


# --- the console line: the numbers the verdict was decided on -----------------------------------


def judged(champion: Champion | None, **criteria) -> GateResult:
    bar = load_config(overrides=[f"promotion_criteria.{k}={v}" for k, v in criteria.items()]).promotion_criteria
    rows = evaluate_criteria(bar, METRICS, champion)
    failed = [r for r in rows if not r.passed]
    return GateResult(
        passed=not failed, decided_by=failed[0].name if failed else ALL_MET, metric="best_val_accuracy",
        candidate={"run_id": "run", "value": METRICS["best_val_accuracy"]}, champion=champion, criteria=rows, bar=bar,
    )  # fmt: skip


def test_the_console_line_gives_candidate_champion_and_required_gain() -> None:
    champion = Champion("3", "run", 0.948, "re-evaluated on the validation split of data 1a2b")
    assert judged(champion, min_improvement=0.005).summary() == (
        "Quality Gate 1 failed: improvement_over_champion. best_val_accuracy: candidate 0.9500 (threshold 0.9000); "
        "champion v3 0.9480, re-evaluated on the validation split of data 1a2b; gain +0.0020, required >= +0.0050"
    )
    assert judged(None).summary() == (
        "Quality Gate 1 passed: all criteria met. best_val_accuracy: candidate 0.9500 (threshold 0.9000); no champion yet"
    )
    # A release criterion that decided is shown with its own figures.
    line = judged(None, min_per_class_accuracy=0.95).summary()
    assert line.startswith("Quality Gate 1 failed: min_per_class_accuracy. ")
    assert line.endswith("; min_per_class_accuracy 0.9100 (class 1), required >= 0.9500")


def test_promote_prints_the_numbers_it_decided_on(workdir: Path, cli) -> None:
    sets = ["--quiet", "--epochs", "1", "--set", "model.name=gate-line"]
    first = cli("train", *sets)
    assert first.exit_code == 0, first.stderr
    won = cli("promote", "--run-id", first.values["RUN_ID"])
    assert won.exit_code == 0, won.stderr
    assert "Quality Gate 1 passed: all criteria met. best_val_accuracy: candidate 0." in won.stderr
    assert "no champion yet" in won.stderr
    again = cli("train", *sets)  # deterministic: the same model again, which cannot beat itself
    assert again.exit_code == 0, again.stderr
    lost = cli("promote", "--run-id", again.values["RUN_ID"])
    assert lost.exit_code == 3, lost.stderr
    text = " ".join(lost.stderr.split())  # rich wraps long lines on a narrow console
    value = f"{won_value(first.values['RUN_ID']):.4f}"
    assert f"Quality Gate 1 failed: improvement_over_champion. best_val_accuracy: candidate {value}" in text, text
    assert f"champion v1 {value}, logged best_val_accuracy (same data digest); gain +0.0000, required >= +0.0050" in text, text
    assert cli("promote", "--run-id", again.values["RUN_ID"], "--quiet").stderr.count("Quality Gate 1") == 0


def won_value(run_id: str) -> float:
    from champion.registry.tracking import client

    return client().get_run(run_id).data.metrics["best_val_accuracy"]
