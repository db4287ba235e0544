"""Evaluate a classifier on uint8 images: logits, accuracy, per-class accuracy, size, latency.

Shared by training (final metrics), Quality Gate 1 (re-evaluating a champion on new data) and
Quality Gate 2 (the PyTorch side of the parity check), so every stage measures the same way.
"""

from __future__ import annotations

import hashlib
import io
import re
import statistics
import time
import unicodedata
from typing import Sequence

import numpy as np
import torch
from torch import nn

from champion.metrics import accuracy, confusion_matrix, per_class_accuracy  # noqa: F401 - callers use them from here


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) to float32 in [0, 1]: the input every classifier takes."""
    t = torch.as_tensor(images)
    return t.float().div_(255) if t.dtype == torch.uint8 else t.float()


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    out = [model(to_float(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def model_size_mb(model: nn.Module) -> float:
    """Size of the serialized state dict in MB (10^6 bytes): what a deployment downloads."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


@torch.inference_mode()
def inference_time_ms(model: nn.Module, example: torch.Tensor, warmup: int = 10, repeats: int = 50) -> float:
    """Median batch-1 latency on this machine's CPU, after warm-up."""
    model.eval()
    x = example[:1]
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


CLASS_METRIC_PREFIX = "val_accuracy_class_"
# Run artefact {class name: metric key}: how to find a class's accuracy among the run's metrics.
CLASS_METRIC_KEYS_ARTIFACT = "per_class_metric_keys.json"
# Characters every MLflow store accepts in a metric key: MLflow allows \w (any Unicode letter),
# '-', '.', ' ', '/' and, except on Windows, ':'; the portable ASCII subset is kept, '/' excepted
# (a key is also a path in file stores).
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]")
_MAX_KEY = 250  # MLflow's MAX_ENTITY_KEY_LENGTH


def class_metric_keys(classes: Sequence[str]) -> dict[str, str]:
    """The metric key of each class's validation accuracy: `val_accuracy_class_<label>`.

    A label MLflow would refuse (`cat (domestic)`, `c++`, `café`) is made safe: accents dropped,
    other characters replaced by '_', and a short hash of the original name appended so that two
    labels never share a key. The result depends on each name only (and, for a pathological clash,
    on the sorted class list), so every run and every stage computes the same keys.
    """
    keys: dict[str, str] = {}
    taken: set[str] = set()
    for name in sorted(classes):
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        safe = _UNSAFE.sub("_", ascii_name)
        key = CLASS_METRIC_PREFIX + name
        if safe != name or len(key) > _MAX_KEY:
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            key = f"{CLASS_METRIC_PREFIX}{safe[: _MAX_KEY - len(CLASS_METRIC_PREFIX) - 12]}_{digest}"
        base, n = key, 2
        while key in taken:  # only when a label equals another's sanitised key
            key, n = f"{base}_{n}", n + 1
        keys[name] = key
        taken.add(key)
    return {name: keys[name] for name in classes}
