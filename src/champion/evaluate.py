"""Evaluate a classifier on uint8 images: logits, accuracy, per-class accuracy, size, latency.

Shared by training (final metrics), Quality Gate 1 (re-evaluating a champion on new data) and
Quality Gate 2 (the PyTorch side of the parity check), so every stage measures the same way.
"""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
import torch
from torch import nn


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) to float32 in [0, 1]: the input every classifier takes."""
    t = torch.as_tensor(images)
    return t.float().div_(255) if t.dtype == torch.uint8 else t.float()


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    out = [model(to_float(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(1)
    return np.divide(np.diag(confusion), totals, out=np.zeros(len(totals)), where=totals > 0)


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float((labels == predictions).mean()) if len(labels) else float("nan")


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
