"""The final validation report reuses the best epoch's validation predictions instead of predicting the
split again, and says exactly what predicting it again with the logged model says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def predicted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images of every `evaluate.predict_logits` call, which still predicts."""
    from champion import evaluate

    calls: list[int] = []
    real = evaluate.predict_logits

    def counting(model, images, batch_size=1000):
        calls.append(len(images))
        return real(model, images, batch_size)

    monkeypatch.setattr(evaluate, "predict_logits", counting)
    return calls


def test_the_report_is_the_logged_models_own_and_is_not_computed_twice(workdir: Path, predicted: list[int]) -> None:
    import mlflow

    from champion import evaluate, ingest
    from champion.registry import tracking
    from champion.train import run as train
    from champion.config import load_config

    cfg = load_config(overrides=["training.epochs=3"])
    result = train.train(cfg, quiet=True)
    data = ingest.prepare(cfg.data, cfg.training.seed)
    x_val, y_val = data.split("val")
    assert len(y_val) not in predicted  # the validation loop's predictions were used

    report = json.loads(tracking.read_artifact(result.run_id, "evaluation.json"))
    model = mlflow.pytorch.load_model(result.model_uri)
    again = evaluate.predict_logits(model, x_val).argmax(1)  # after the check: counted, still real
    assert report["confusion_matrix"] == evaluate.confusion_matrix(y_val, again, data.num_classes).tolist()
    assert report["accuracy"] == evaluate.accuracy(y_val, again)
    per_class = evaluate.per_class_accuracy(np.array(report["confusion_matrix"]))
    keys = evaluate.class_metric_keys(data.classes)
    assert [result.metrics[keys[c]] for c in data.classes] == per_class.tolist()


def test_under_mixed_precision_the_report_predicts_the_split_again(workdir: Path, predicted: list[int]) -> None:
    """The loop ran under bf16 autocast; the report is of the logged float32 model, so it predicts again."""
    from champion import ingest
    from champion.train import run as train
    from champion.config import load_config

    cfg = load_config(overrides=["training.epochs=1", "training.precision=bf16-mixed", "promotion_criteria.threshold=0.1"])
    train.train(cfg, quiet=True)
    _, y_val = ingest.prepare(cfg.data, cfg.training.seed).split("val")
    assert len(y_val) in predicted
