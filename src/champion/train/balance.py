"""Class balancing of the training split: undersample, oversample, or loss weights.

Applied at training time to the cached split's indices (the cache itself never changes), seeded,
and only ever to the training split: validation and test keep the true class distribution.
"""

from __future__ import annotations

import numpy as np

from champion.errors import DataError


def balance_indices(labels: np.ndarray, indices: np.ndarray, mode: str, seed: int, num_classes: int) -> np.ndarray:
    """Training indices after `undersample` (every class cut to the smallest) or `oversample`
    (every class drawn with replacement up to the largest); unchanged for `none` and `weighted`."""
    if mode in ("none", "weighted"):
        return indices
    counts = np.bincount(labels[indices], minlength=num_classes)
    empty = [c for c in range(num_classes) if counts[c] == 0]
    if empty:
        raise DataError(f"cannot {mode}: classes {empty} have no training images")
    rng = np.random.default_rng(seed)
    target = counts.min() if mode == "undersample" else counts.max()
    out = []
    for c in range(num_classes):
        members = indices[labels[indices] == c]
        if mode == "undersample":
            out.append(rng.choice(members, size=target, replace=False))
        else:  # every original image once, then random repeats up to the largest class
            out.append(np.concatenate([members, rng.choice(members, size=target - len(members), replace=True)]))
    return np.sort(np.concatenate(out))


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency loss weights, normalised so a balanced set gets weight 1 everywhere."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise DataError(f"cannot weight classes {np.flatnonzero(counts == 0).tolist()}: no training images")
    return counts.sum() / (num_classes * counts)
