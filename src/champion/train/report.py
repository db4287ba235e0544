"""The final evaluation of the weights a training logs: accuracy metrics, the validation report, size and latency.

Predictions go through `champion.evaluate` (looked up there at call time), in batches of
`EVAL_BATCH`, the validation loop's batch size: the best epoch's predictions from that loop are the
report's own, and are reused rather than made again.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from champion import evaluate, ingest

# Images per batch when predicting a split, in the validation loop and in the report alike.
EVAL_BATCH = 1000


def final_metrics(
    model: nn.Module, data: ingest.Dataset, val_predictions: np.ndarray | None = None
) -> tuple[dict[str, float], dict]:
    """Accuracy metrics of the logged weights, and the validation report (`evaluation.json`).

    `val_predictions`: the validation split's predictions by these weights when training already made
    them (the best epoch's validation loop); otherwise they are computed here.
    """
    x_val, y_val = data.split("val")
    if val_predictions is not None and len(val_predictions) == len(y_val):
        pred = val_predictions
    else:
        pred = evaluate.predict_logits(model, x_val, EVAL_BATCH).argmax(1)
    confusion = evaluate.confusion_matrix(y_val, pred, data.num_classes)
    per_class = evaluate.per_class_accuracy(confusion)
    # Class names are folder names, and MLflow refuses many characters in metric keys: the keys are
    # sanitised, and the report keeps the original names with the mapping.
    keys = evaluate.class_metric_keys(data.classes)
    metrics = {keys[name]: float(a) for name, a in zip(data.classes, per_class)}
    test: dict = {}
    if data.has("test"):
        x_test, y_test = data.split("test")
        test_pred = evaluate.predict_logits(model, x_test, EVAL_BATCH).argmax(1)
        metrics["test_accuracy"] = evaluate.accuracy(y_test, test_pred)
        test = _test_report(data.classes, y_test, test_pred)
    report = {
        "classes": data.classes,
        "split": "val",
        "accuracy": evaluate.accuracy(y_val, pred),
        "per_class_accuracy": dict(zip(data.classes, per_class.tolist())),
        "confusion_matrix": confusion.tolist(),
    }
    if test:
        report["test"] = test  # what `champion evaluate` compares a fresh labelled set with
    return metrics, report


def _test_report(classes: list[str], labels: np.ndarray, predicted: np.ndarray) -> dict:
    """The test split's accuracy and confusion matrix (per-class figures follow from the matrix)."""
    confusion = evaluate.confusion_matrix(labels, predicted, len(classes))
    return {"split": "test", "accuracy": evaluate.accuracy(labels, predicted), "confusion_matrix": confusion.tolist()}


def deployment_metrics(model: nn.Module, data: ingest.Dataset) -> dict[str, float]:
    """Size and batch-1 latency of the model as it is logged (default memory layout)."""
    first_val_image = data.images[data.splits["val"][:1]]
    return {
        "model_size_mb": evaluate.model_size_mb(model),
        "inference_time_ms": evaluate.inference_time_ms(model, evaluate.to_float(first_val_image)),
    }
