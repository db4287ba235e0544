"""The model card, built from a hand-made training run in a real SQLite-backed MLflow store."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

mlflow = pytest.importorskip("mlflow")

from champion.stages.card import PLOTS, write_card  # noqa: E402
from champion.errors import ChampionError  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["0", "1", "2"]
CONFUSION = [[10, 0, 0], [1, 8, 1], [0, 2, 14]]
GATE_REPORT = {
    "gate": "quality_gate_1", "result": "failed", "decided_by": "min_improvement", "metric": "best_val_accuracy",
    "candidate": {"run_id": "x", "value": 0.9722},
    "champion": {"version": "1", "run_id": "y", "value": 0.97, "evaluated_on": "val"},
    "criteria": [
        {"name": "threshold", "required": ">= 0.9000", "actual": "0.9722", "passed": True},
        {"name": "min_improvement", "required": ">= 0.0100", "actual": "0.0022", "passed": False},
    ],
    "model_version": None,
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SQLite store for the module (schema migrations cost seconds); the global URI is restored after."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield mlflow.create_experiment("card", artifact_location=(tmp / "art").as_uri())
        finally:
            mlflow.set_tracking_uri(None)  # drops the global override; the monkeypatch restores the env


def make_run(experiment: str, *, evaluation: bool = True, gate: bool = True, export: bool = False) -> str:
    """A training run with the layout champion.train and the gate leave, without training anything."""
    export_id = None
    if export:
        with mlflow.start_run(experiment_id=experiment, run_name="export") as ex:
            mlflow.log_metrics({"validation_max_abs_diff": 2.5e-6, "validation_speedup": 3.1, "onnx_file_size_mb": 4.2})
            mlflow.set_tag("gate2.result", "passed")
            export_id = ex.info.run_id
    with mlflow.start_run(experiment_id=experiment, run_name="digits-cnn") as run:
        mlflow.log_params({
            "model.name": "digits-cnn", "model.architecture": "simple_cnn", "training.epochs": 5,
            "training.learning_rate": 0.001, "training.batch_size": 32, "training.optimizer": "adam",
            "data.source": "data/digits", "data.image_size": 28, "data.validation_split": 0.2,
            "data.train_size": 144, "data.val_size": 36, "data.test_size": 20,
        })
        mlflow.set_tags({
            "git.commit": "abc123", "git.branch": "main", "git.dirty": "false", "architecture": "simple_cnn",
            "approach": "from_scratch", "pretrained": "false", "frozen_layers": "0", "data.digest": "d1g3st",
            "data.source": "data/digits", "model_uri": "runs:/x/model",
        })
        for epoch, (loss, acc) in enumerate([(1.2, 0.6), (0.6, 0.9), (0.3, 0.9722)]):
            mlflow.log_metrics({"train_loss": loss, "val_loss": loss + 0.1, "val_accuracy": acc,
                                "best_val_accuracy": acc, "epoch_time": 1.0, "learning_rate": 0.001}, step=epoch)
        mlflow.log_metrics({"test_accuracy": 0.95, "model_size_mb": 1.234, "inference_time_ms": 0.56,
                            **{f"val_accuracy_class_{c}": 1.0 for c in CLASSES}})
        if evaluation:
            per_class = {c: row[i] / sum(row) for i, (c, row) in enumerate(zip(CLASSES, CONFUSION))}
            mlflow.log_dict({"classes": CLASSES, "split": "val", "accuracy": 0.9722,
                             "per_class_accuracy": per_class, "confusion_matrix": CONFUSION}, "evaluation.json")
        if gate:
            mlflow.log_dict(GATE_REPORT, "gate_report.json")
            mlflow.set_tag("gate1.result", "failed")
        if export_id:
            mlflow.set_tags({"export.run_id": export_id, "gate2.result": "passed"})
        return run.info.run_id


def test_card_is_written_and_logged(experiment: str, tmp_path: Path) -> None:
    run_id = make_run(experiment, export=True)
    card = write_card(run_id, tmp_path / "card")

    assert card == tmp_path / "card" / "model_card.md"
    text = card.read_text()
    assert text.startswith("# Model card: digits-cnn")
    for name in PLOTS:
        png = tmp_path / "card" / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert f"(plots/{name}.png)" in text
    assert "97.22%" in text and "95.00%" in text  # best val and test accuracy as percentages
    assert "| 1 | 80.00% | 10 |" in text  # per-class accuracy with support = row sum
    assert "| min_improvement | >= 0.0100 | 0.0022 | fail |" in text
    assert "| threshold | >= 0.9000 | 0.9722 | pass |" in text
    assert "Result: **failed** (decided by: min_improvement)" in text
    assert "Epochs run: 3 (max 5)" in text
    assert "Registered version" not in text  # the gate failed: nothing was registered
    assert "## Export and Quality Gate 2" in text and "Quality Gate 2: passed" in text

    client = mlflow.MlflowClient()
    logged = {f.path for f in client.list_artifacts(run_id, "model_card")}
    logged |= {f.path for f in client.list_artifacts(run_id, "model_card/plots")}
    assert "model_card/model_card.md" in logged
    assert {f"model_card/plots/{name}.png" for name in PLOTS} <= logged


def test_card_without_gate_report_says_not_run(experiment: str, tmp_path: Path) -> None:
    text = write_card(make_run(experiment, gate=False), tmp_path).read_text()
    assert "Quality Gate 1: not run yet" in text
    assert "| criterion |" not in text and "Export and Quality Gate 2" not in text


def test_run_without_evaluation_is_rejected(experiment: str, tmp_path: Path) -> None:
    with pytest.raises(ChampionError, match="not a completed champion training run"):
        write_card(make_run(experiment, evaluation=False), tmp_path)



def test_card_never_writes_into_a_users_folder(experiment: str, tmp_path: Path) -> None:
    run_id = make_run(experiment)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model_card.md").write_text("my own notes")
    (mine / "todo.txt").write_text("keep")
    with pytest.raises(ChampionError, match="did not create"):
        write_card(run_id, mine)
    assert (mine / "model_card.md").read_text() == "my own notes"
    assert sorted(p.name for p in mine.iterdir()) == ["model_card.md", "todo.txt"]


def test_card_rewrites_its_own_folder_and_adopts_an_earlier_card(experiment: str, tmp_path: Path) -> None:
    run_id = make_run(experiment)
    old = tmp_path / "old"
    (old / "plots").mkdir(parents=True)
    (old / "model_card.md").write_text("an earlier card")  # what releases before the marker wrote
    (old / "plots" / "confusion_matrix.png").write_bytes(PNG_SIGNATURE)
    card = write_card(run_id, old)
    assert card.read_text().startswith("# Model card")
    assert write_card(run_id, old) == card  # its own folder now: rewritten in place
    logged = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "model_card")}
    assert "model_card/.champion" not in logged  # the ownership marker stays local
