"""The stratified split is scikit-learn's `train_test_split`, draw for draw, without importing it.

Caches built before hold scikit-learn's splits, and a seed must keep naming the same split: the
numpy version is compared with scikit-learn itself, on balanced, skewed and tied class counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from champion.errors import DataError
from champion.ingest.splits import split, stratified_split


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.2, 0.33, 0.5])
@pytest.mark.parametrize("counts", [[50] * 10, [3, 7, 2, 40, 9], [2, 2, 2, 3], [500, 5, 61], [6000] * 10])
def test_the_same_split_as_scikit_learn(seed: int, fraction: float, counts: list[int]) -> None:
    rng = np.random.default_rng(seed)
    y_all = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    indices = np.sort(rng.choice(len(y_all) + 100, size=len(y_all), replace=False))  # not 0..n-1
    y = y_all
    try:
        expected = train_test_split(indices, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc).split(" = ")[0]):
            stratified_split(indices, y, fraction, seed)
        return
    kept, held = stratified_split(indices, y, fraction, seed)
    np.testing.assert_array_equal(kept, expected[0])
    np.testing.assert_array_equal(held, expected[1])


def test_a_class_of_one_image_is_a_data_error_naming_it() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2, 2, 2])
    with pytest.raises(DataError, match=r"stratified validation split.*Classes with fewer than 2 images: \['b'\]"):
        split(labels, ["a", "b", "c"], {}, 0.3, 0.0, seed=0)
