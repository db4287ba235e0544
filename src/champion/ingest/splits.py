"""Stratified, seeded train/val/test splits, computed from labels alone (before any image is decoded)."""

from __future__ import annotations

import numpy as np

from champion.errors import DataError

# sklearn is imported inside `split`, the one function that uses it: every `champion.ingest` import
# (a serving process decoding images included) loads this module.

SPLITS = ("train", "val", "test")


def split(
    labels: np.ndarray,
    classes: list[str],
    fixed: dict[str, np.ndarray],
    validation_split: float,
    test_split: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Split indices into `labels` into train/val/test, keeping the splits a source defines itself.

    Args:
        labels: Integer label of every item.
        classes: Class names (for the error message).
        fixed: Splits the source defines (IDX test files, train/val/test folders): kept as they are.
        validation_split: Fraction of the training pool held out for validation, unless `fixed` has val.
        test_split: Fraction held out for test, unless `fixed` has test.
        seed: Seed of the stratified shuffles.

    Returns:
        Sorted int64 indices for each of "train", "val", "test" (possibly empty).

    Raises:
        DataError: A class has too few items to stratify.
    """
    from sklearn.model_selection import train_test_split

    pool = fixed.get("train", np.arange(len(labels)))
    out = {"test": fixed.get("test", np.array([], dtype=np.int64))}

    def carve(indices: np.ndarray, fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            keep, held = train_test_split(indices, test_size=fraction, stratify=labels[indices], random_state=seed)
        except ValueError as exc:
            counts = np.bincount(labels[indices], minlength=len(classes))
            small = [classes[i] for i, n in enumerate(counts) if n < 2]
            raise DataError(
                f"cannot make a stratified {what} split: {exc}. Classes with fewer than 2 images: {small or 'none'}; "
                f"add images or lower data.{what}_split"
            ) from None
        return np.sort(keep), np.sort(held)

    if "test" not in fixed and test_split > 0:
        pool, out["test"] = carve(pool, test_split, "test")
    if "val" in fixed:
        out["val"] = fixed["val"]
    else:
        pool, out["val"] = carve(pool, validation_split, "validation")
    out["train"] = pool
    return {name: out[name].astype(np.int64) for name in SPLITS}


def subset(splits: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The splits re-indexed into `rows` (sorted item indices that were kept); items not in `rows` drop out."""
    return {name: np.searchsorted(rows, idx[np.isin(idx, rows)]).astype(np.int64) for name, idx in splits.items()}
