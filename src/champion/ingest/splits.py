"""Stratified, seeded train/val/test splits, computed from labels alone (before any image is decoded)."""

from __future__ import annotations

import math

import numpy as np

from champion.errors import DataError

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
    pool = fixed.get("train", np.arange(len(labels)))
    out = {"test": fixed.get("test", np.array([], dtype=np.int64))}

    def carve(indices: np.ndarray, fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            keep, held = stratified_split(indices, labels[indices], fraction, seed)
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


def stratified_split(indices: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) of `indices`: scikit-learn's `train_test_split(indices, test_size=fraction,
    stratify=y, random_state=seed)`, the same split draw for draw (tests compare them), in numpy.

    Importing scikit-learn's model_selection took 1.2 s, as long as preparing thousands of images.
    Its algorithm (StratifiedShuffleSplit): per class, the approximate mode of the multivariate
    hypergeometric gives how many go to each side, ties broken by the seeded generator; each class's
    items are permuted and dealt out; both sides are permuted again.

    Raises:
        ValueError: with scikit-learn's message, when the split cannot be made.
    """
    n = len(indices)
    if not 0 < fraction < 1:
        raise ValueError(f"test_size={fraction} should be either positive and smaller than the number of samples {n} or a float in the (0, 1) range")
    n_test = math.ceil(fraction * n)
    n_train = n - n_test
    if n_train <= 0:
        raise ValueError(f"With n_samples={n}, test_size={fraction} and train_size=None, the resulting train set will be empty. Adjust any of the aforementioned parameters.")
    classes, y_index, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(
            "The least populated classes in y have only 1 member, which is too few. The minimum number of groups "
            f"for any class cannot be less than 2. Classes with too few members are: {classes[counts < 2].tolist()}"
        )
    for what, size in (("train_size", n_train), ("test_size", n_test)):
        if size < len(classes):
            raise ValueError(f"The {what} = {size} should be greater or equal to the number of classes = {len(classes)}")
    by_class = np.split(np.argsort(y_index, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, members in enumerate(by_class):
        dealt = members.take(rng.permutation(counts[i]), mode="clip")
        train.extend(dealt[: n_i[i]])
        test.extend(dealt[n_i[i] : n_i[i] + t_i[i]])
    return indices[rng.permutation(train)], indices[rng.permutation(test)]


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `draws` come from each class: floored shares, the rest to the largest
    remainders, ties drawn at random (scikit-learn's `_approximate_mode`)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), need)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)


def subset(splits: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The splits re-indexed into `rows` (sorted item indices that were kept); items not in `rows` drop out."""
    return {name: np.searchsorted(rows, idx[np.isin(idx, rows)]).astype(np.int64) for name, idx in splits.items()}
