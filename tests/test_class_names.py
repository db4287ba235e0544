"""Any folder name is a class: labels MLflow refuses in metric keys still train, gate and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from champion.evaluate import CLASS_METRIC_PREFIX, class_metric_keys
from conftest import image_folder

AWKWARD = ("cat (domestic)", "c++", "café")


def _valid_metric_key(key: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric_name

    try:
        _validate_metric_name(key)
    except MlflowException:
        return False
    return True


def test_class_metric_keys_are_valid_unique_and_deterministic() -> None:
    classes = ["0", "dog", "a-b.c d", *AWKWARD, "日本", "x" * 300, "c__", "C++"]
    keys = class_metric_keys(classes)
    assert list(keys) == classes
    assert all(_valid_metric_key(k) and k.isascii() and len(k) <= 250 for k in keys.values())
    assert len(set(keys.values())) == len(classes)
    # Names MLflow accepts keep their plain key, as before.
    assert keys["0"] == "val_accuracy_class_0" and keys["a-b.c d"] == "val_accuracy_class_a-b.c d"
    assert keys["café"].startswith("val_accuracy_class_cafe_")
    assert class_metric_keys(list(reversed(classes))) == keys  # independent of order
    assert class_metric_keys(["c++"])["c++"] == keys["c++"]  # a class's key does not depend on the others


def test_a_label_equal_to_another_labels_key_is_resolved_deterministically() -> None:
    clash = class_metric_keys(["c++"])["c++"].removeprefix(CLASS_METRIC_PREFIX)
    keys = class_metric_keys(["c++", clash])
    assert len(set(keys.values())) == 2 and keys == class_metric_keys([clash, "c++"])


@pytest.mark.slow
def test_awkward_class_names_run_end_to_end(workdir: Path, cli) -> None:
    import mlflow

    image_folder(workdir / "pets", AWKWARD)
    result = cli(
        "run", "--quiet", "--epochs", "1", "--set", f"data.source={workdir / 'pets'}", "--set", "data.channels=3",
        "--set", "data.image_size=[16,16]", "--set", "data.validation_split=0.25", "--set", "training.batch_size=8",
        "--set", "model.name=pets", "--set", "promotion_criteria.threshold=0",
        "--set", "promotion_criteria.min_per_class_accuracy=0", "--output-dir", str(workdir / "out"),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.values["RESULT"] == "passed" and result.values["GATE2_RESULT"] == "passed"
    run_id = result.values["RUN_ID"]
    run = mlflow.MlflowClient().get_run(run_id)
    keys = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/per_class_metric_keys.json"))
    assert set(keys) == set(AWKWARD)
    assert all(0 <= run.data.metrics[k] <= 1 for k in keys.values())
    evaluation = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation.json"))
    assert sorted(evaluation["per_class_accuracy"]) == sorted(AWKWARD)  # the report keeps the real names
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/gate_report.json"))
    floor = next(c for c in report["criteria"] if c["name"] == "min_per_class_accuracy")
    assert any(f"(class {name})" in floor["actual"] for name in AWKWARD), floor  # named as the user named it
    card = (workdir / "out" / "pets" / "model_card" / "model_card.md").read_text(encoding="utf-8")
    assert all(name in card for name in AWKWARD)
