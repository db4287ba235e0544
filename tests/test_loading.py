"""Balancing, batch augmentation, the epoch-seeded sharded sampler and memory-mapped caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from champion import ingest
from champion.train.augment import BatchAugment
from champion.train.balance import balance_indices, class_weights
from champion.config import DataConfig
from champion.errors import DataError
from champion.train.loader import EpochBatchSampler, batch_loader

LABELS = np.array([0] * 50 + [1] * 10 + [2] * 5)
TRAIN = np.arange(60)  # the last 5 (class 2) are "validation" and must never be touched


def test_undersample_and_oversample_balance_the_training_split_only() -> None:
    under = balance_indices(LABELS, TRAIN, "undersample", seed=0, num_classes=2)
    assert np.bincount(LABELS[under]).tolist() == [10, 10]
    assert set(under) <= set(TRAIN)
    over = balance_indices(LABELS, TRAIN, "oversample", seed=0, num_classes=2)
    assert np.bincount(LABELS[over]).tolist() == [50, 50]
    assert set(TRAIN) <= set(over)  # every original image kept
    assert np.array_equal(over, balance_indices(LABELS, TRAIN, "oversample", seed=0, num_classes=2))  # seeded
    assert not np.array_equal(under, balance_indices(LABELS, TRAIN, "undersample", seed=1, num_classes=2))


def test_a_class_missing_from_training_is_a_clear_error_not_a_crash() -> None:
    with pytest.raises(DataError, match=r"classes \[2\]"):
        balance_indices(LABELS, TRAIN, "undersample", seed=0, num_classes=3)


def test_weighted_gives_inverse_frequency_weights() -> None:
    w = class_weights(LABELS[TRAIN], 2)
    assert w[1] / w[0] == pytest.approx(5.0)
    assert (w * np.bincount(LABELS[TRAIN])).sum() == pytest.approx(60)  # the mean weight per image is 1


def test_augment_flips_and_crops_each_image_independently() -> None:
    x = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(64, 1, 16, 16).contiguous()
    flipped = BatchAugment(hflip=True)(x, torch.Generator().manual_seed(0))
    is_flipped = flipped[:, 0, 0, 0] > 0.5
    assert 10 < is_flipped.sum() < 54  # about half, chosen per image
    assert torch.equal(flipped[is_flipped], x[is_flipped].flip(-1)) and torch.equal(flipped[~is_flipped], x[~is_flipped])
    cropped = BatchAugment(crop_scale=(0.2, 0.5))(x, torch.Generator().manual_seed(0))
    assert cropped.shape == x.shape
    spans = cropped[:, 0, 0, -1] - cropped[:, 0, 0, 0]
    assert (spans < 0.95).all() and spans.std() > 0.01  # zoomed in, by a different amount per image
    again = BatchAugment(crop_scale=(0.2, 0.5))(x, torch.Generator().manual_seed(0))
    assert torch.equal(cropped, again)


def test_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    s = EpochBatchSampler(100, 32, shuffle=True, seed=3)
    first = torch.cat(list(s))
    s.set_epoch(1)
    second = torch.cat(list(s))
    s.set_epoch(0)
    assert torch.equal(torch.cat(list(s)), first) and not torch.equal(first, second)
    assert sorted(first.tolist()) == list(range(100)) and len(s) == 4


def test_sampler_shards_disjointly_across_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    import champion.train.loader as loader

    shards = []
    for rank in range(3):
        monkeypatch.setattr(loader, "_rank_and_world", lambda r=rank: (r, 3))
        s = EpochBatchSampler(100, 8, shuffle=True, seed=0)
        shards.append(torch.cat(list(s)))
        assert len(s) == 5  # 34 indices per rank, in batches of 8
    assert all(len(x) == 34 for x in shards)
    assert set(torch.cat(shards).tolist()) == set(range(100))  # every image seen; 2 repeated as padding


def test_large_cache_is_memory_mapped_and_batches_match(tmp_path) -> None:
    cfg = DataConfig(cache_dir=str(tmp_path))
    in_memory = ingest.prepare(cfg, seed=0)
    mapped = ingest.prepare(cfg.model_copy(update={"memory_budget_mb": 0.1}), seed=0)
    assert isinstance(mapped.images, np.memmap) and not isinstance(in_memory.images, np.memmap)
    idx = in_memory.splits["train"]
    a = batch_loader(in_memory.images, in_memory.labels, idx, 100, shuffle=True, seed=1)
    b = batch_loader(mapped.images, mapped.labels, idx, 100, shuffle=True, seed=1)
    for (xa, ya), (xb, yb) in zip(a, b):
        # The mapped loader reads each batch in sorted order: same images, same pairs.
        key_a = sorted(zip(ya.tolist(), xa.flatten(1).sum(1).tolist()))
        key_b = sorted(zip(yb.tolist(), xb.flatten(1).sum(1).tolist()))
        assert key_a == key_b
