"""The bar belongs to the registered model: stored at the first promotion, changed only by a recorded command.

Real SQLite-backed MLflow, real training on digits (1 epoch), real ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ShipModel, invoke, module_workdir

pytestmark = pytest.mark.slow
NAME = "policy-cnn"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with module_workdir(tmp_path_factory, "policy") as root:
        yield root


@pytest.fixture(scope="module")
def champion_run(store: Path, shipped_model: ShipModel) -> str:
    """A 1-epoch run promoted as v1 under the default criteria (threshold 0.90, min_improvement 0.005)."""
    shipped = shipped_model(NAME, through="promote", store=store)
    assert shipped.model_version == "1", shipped.values
    return shipped.run_id


@pytest.fixture(scope="module")
def lax_run(store: Path, champion_run: str) -> str:
    """A barely trained candidate whose own config lowers the bar to nothing."""
    trained = invoke(
        "train", "--quiet", "--epochs", "1", "--set", f"model.name={NAME}", "--set", "training.learning_rate=1e-7",
        "--set", "promotion_criteria.threshold=0.0", "--set", "promotion_criteria.min_improvement=0.0",
        "--set", "export.atol=1.0",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    return trained.values["RUN_ID"]


def gate_report(store: Path, run_id: str) -> dict:
    from mlflow import MlflowClient

    return json.loads(Path(MlflowClient().download_artifacts(run_id, "gate_report.json", str(store / run_id))).read_text())


def test_first_promotion_stores_the_policy_on_the_registered_model(store: Path, champion_run: str) -> None:
    from mlflow import MlflowClient

    from champion.registry import history
    from champion.registry.policy import POLICY_TAG

    stored = json.loads(MlflowClient().get_registered_model(NAME).tags[POLICY_TAG])
    assert stored["promotion_criteria"]["threshold"] == 0.9 and stored["promotion_criteria"]["min_improvement"] == 0.005
    assert stored["export"] == {"atol": 1e-5, "rtol": 1e-3, "num_samples": 100, "batch_sizes": [1, 16], "int8": {"max_accuracy_drop": 0.01}}
    report = gate_report(store, champion_run)
    assert report["policy"]["source"].startswith("candidate config (first promotion")
    kinds = [(e.reason, e.to_version) for e in history.events(NAME)]
    assert kinds[:2] == [(history.GATE1_PASSED, "1"), (history.POLICY_STORED, None)]  # the bar is stored once v1 is champion
    assert history.events(NAME)[0].alias == "champion"


def test_a_candidate_cannot_lower_its_own_bar(store: Path, champion_run: str, lax_run: str) -> None:
    from mlflow import MlflowClient

    result = invoke("promote", "--run-id", lax_run, "--quiet")
    assert result.exit_code == 3, result.stderr
    # Judged by the stored 0.90, not its own 0.0: the threshold decides, not the champion comparison.
    assert result.values["DECIDED_BY"] == "threshold"
    report = gate_report(store, lax_run)
    assert report["criteria"][0]["required"] == ">= 0.9000" and report["criteria"][0]["passed"] is False
    policy = report["policy"]
    assert policy["source"] == "registered model"
    assert policy["stored"]["promotion_criteria"]["threshold"] == 0.9
    assert policy["candidate_config"]["promotion_criteria"]["threshold"] == 0.0
    assert "promotion_criteria.threshold" in policy["differs_from_candidate"]
    assert str(MlflowClient().get_registered_model(NAME).aliases["champion"]) == "1"


def test_models_policy_shows_and_changes_the_bar_with_an_event(store: Path, champion_run: str, lax_run: str) -> None:
    from champion.registry import history

    shown = invoke("models", "policy", NAME)
    assert shown.exit_code == 0, shown.stderr
    assert "promotion_criteria.threshold=0.9" in shown.stdout.splitlines()
    assert "export.batch_sizes=[1, 16]" in shown.stdout.splitlines()

    changed = invoke("models", "policy", NAME, "--set", "promotion_criteria.threshold=0.0")
    assert changed.exit_code == 0, changed.stderr
    assert "promotion_criteria.threshold=0.0" in changed.stdout.splitlines()
    event = history.events(NAME)[-1]
    assert event.reason == history.POLICY_CHANGED and event.who and event.when and event.alias is None
    assert event.details["changed"] == {"promotion_criteria.threshold": [0.9, 0.0]}
    assert event.details["old"]["promotion_criteria.threshold"] == 0.9 and event.details["new"]["promotion_criteria.threshold"] == 0.0

    # The new value is the bar now: the threshold passes, and the champion comparison decides.
    result = invoke("promote", "--run-id", lax_run, "--quiet")
    assert result.exit_code == 3 and result.values["DECIDED_BY"] == "improvement_over_champion", result.stderr
    rows = {r["name"]: r for r in gate_report(store, lax_run)["criteria"]}
    assert rows["threshold"]["required"] == ">= 0.0000" and rows["threshold"]["passed"] is True

    restored = invoke("models", "policy", NAME, "--set", "promotion_criteria.threshold=0.9")
    assert restored.exit_code == 0, restored.stderr
    assert [e.reason for e in history.events(NAME)].count(history.POLICY_CHANGED) == 2


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        ("promotion_criteria.bogus=1", "promotion_criteria.bogus"),
        ("export.formats=[onnx]", "export.formats"),  # what to build is not part of the bar
        ("export.atol=-1", "export.atol"),
        ("promotion_criteria.threshold=1.5", "promotion_criteria.threshold"),
        ("nosuchsection.key=1", "nosuchsection.key"),
        ("promotion_criteria.threshold", "promotion_criteria.threshold"),
    ],
)
def test_bad_policy_changes_are_usage_errors_that_name_the_key(
    store: Path, champion_run: str, assignment: str, named: str
) -> None:
    from champion.registry import history

    before = len(history.events(NAME))
    result = invoke("models", "policy", NAME, "--set", assignment)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert named in result.stderr
    assert len(history.events(NAME)) == before  # nothing changed, nothing recorded


def test_policy_of_an_unknown_model_is_a_clear_error(store: Path) -> None:
    result = invoke("models", "policy", "never-registered")
    assert result.exit_code == 1 and "never-registered" in result.stderr
    result = invoke("models", "policy", "never-registered", "--set", "export.atol=1e-4")
    assert result.exit_code == 1 and "no registered model" in result.stderr


def test_gate2_uses_the_stored_policy_not_the_exports_config(store: Path, champion_run: str) -> None:
    from mlflow import MlflowClient

    from champion.registry import history

    changed = invoke("models", "policy", NAME, "--set", "export.num_samples=7", "--set", "export.batch_sizes=[1,3]")
    assert changed.exit_code == 0, changed.stderr
    exported = invoke("export", "--model-name", NAME, "--quiet")
    assert exported.exit_code == 0, exported.stderr
    export_id = exported.values["EXPORT_RUN_ID"]
    validated = invoke("validate", "--export-run-id", export_id, "--quiet")
    assert validated.exit_code == 0, validated.stderr
    c = MlflowClient()
    report = json.loads(Path(c.download_artifacts(export_id, "validation_report.json", str(store / export_id))).read_text())
    assert report["accuracy"]["samples"] == 7  # the run's own config says 100
    assert sorted({row["batch_size"] for row in report["checks"]}) == [1, 3]
    assert report["policy"]["source"] == "registered model"
    assert report["policy"]["candidate_config"]["export"]["num_samples"] == 100
    moved = history.events(NAME)[-1]
    assert moved.reason == history.GATE2_PASSED and moved.alias == "deploy"
    assert moved.registered_model == f"{NAME}-onnx" and moved.to_version == validated.values["MODEL_VERSION"]
    assert moved.report == f"runs:/{export_id}/validation_report.json"


def test_events_are_append_only_params(store: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from champion.registry import history
    from champion.registry.tracking import setup_tracking

    setup_tracking()
    c = MlflowClient()
    c.create_registered_model("events-only")
    event_id = history.record("events-only", "note", value=1, text="3").event_id
    [event] = history.events("events-only")
    assert event.details == {"value": 1, "text": "3"} and event.event_id == event_id
    with pytest.raises(MlflowException):  # MLflow refuses to rewrite a logged param
        c.log_param(event_id, "detail.value", "2")
    with pytest.raises(MlflowException):
        c.log_param(event_id, "to_version", "7")
    c.delete_run(event_id)
    [deleted] = history.events("events-only")  # a deleted event is still listed, and marked
    assert deleted.deleted and deleted.details["value"] == 1


def test_a_rejected_first_candidate_stores_no_policy(store: Path) -> None:
    from mlflow import MlflowClient

    from champion.registry import history, policy

    name = "policy-unpromoted"
    trained = invoke("train", "--quiet", "--epochs", "1", "--set", f"model.name={name}", "--set", "promotion_criteria.threshold=0.999")
    assert trained.exit_code == 0, trained.stderr
    result = invoke("promote", "--run-id", trained.values["RUN_ID"], "--quiet")
    assert result.exit_code == 3 and result.values["DECIDED_BY"] == "threshold", result.stderr
    # On fail the registry is untouched: no registered model, no policy, no event.
    assert policy.stored(name) is None and history.events(name) == []
    assert MlflowClient().search_registered_models(f"name = '{name}'") == []


def test_a_model_promoted_before_policies_adopts_its_champions_bar(store: Path) -> None:
    """Upgrading must not let the next candidate set the bar: the champion's own config becomes the policy."""
    from mlflow import MlflowClient

    from champion.registry import history
    from champion.registry.policy import POLICY_TAG

    name = "policy-legacy"
    first = invoke("train", "--quiet", "--epochs", "1", "--set", f"model.name={name}", "--set", "export.num_samples=5")
    assert first.exit_code == 0, first.stderr
    assert invoke("promote", "--run-id", first.values["RUN_ID"], "--quiet").exit_code == 0
    c = MlflowClient()
    c.delete_registered_model_tag(name, POLICY_TAG)  # as a registry written before policies existed looks

    lax = invoke(
        "train", "--quiet", "--epochs", "1", "--set", f"model.name={name}", "--set", "training.learning_rate=1e-7",
        "--set", "promotion_criteria.threshold=0.0", "--set", "promotion_criteria.min_improvement=0.0",
    )  # fmt: skip
    result = invoke("promote", "--run-id", lax.values["RUN_ID"], "--quiet")
    assert result.exit_code == 3 and result.values["DECIDED_BY"] == "threshold", result.stderr
    report = gate_report(store, lax.values["RUN_ID"])
    assert report["policy"]["source"] == "registered model"
    assert report["policy"]["stored"]["promotion_criteria"]["threshold"] == 0.9
    adopted = [e for e in history.events(name) if e.reason == history.POLICY_STORED]
    assert len(adopted) == 2 and "adopted" in adopted[-1].details["why"]

    # Gate 2 of a legacy model works too, with the bar of the champion's config (num_samples 5).
    c.delete_registered_model_tag(name, POLICY_TAG)
    exported = invoke("export", "--model-name", name, "--quiet")
    validated = invoke("validate", "--export-run-id", exported.values["EXPORT_RUN_ID"], "--quiet")
    assert validated.exit_code == 0, validated.stderr
    assert json.loads(c.get_registered_model(name).tags[POLICY_TAG])["export"]["num_samples"] == 5
