"""Classification metrics on label arrays, numpy only: what training, the gates and `champion evaluate`
report, computed one way. No torch here, so the ONNX-only commands (`predict`, `evaluate`) use it too.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Each class's share of its items predicted right: its recall."""
    totals = confusion.sum(1)
    return np.divide(np.diag(confusion), totals, out=np.zeros(len(totals)), where=totals > 0)


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float((labels == predictions).mean()) if len(labels) else float("nan")


def precision_recall_f1(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support; 0 where a class was never predicted or never present."""
    hits = np.diag(confusion).astype(np.float64)
    predicted, present = confusion.sum(0), confusion.sum(1)
    precision = np.divide(hits, predicted, out=np.zeros(len(hits)), where=predicted > 0)
    recall = np.divide(hits, present, out=np.zeros(len(hits)), where=present > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(len(hits)), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": present}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, shifted by the row maximum so that large logits cannot overflow."""
    z = logits.astype(np.float32, copy=False) - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
