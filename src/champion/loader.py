"""Batches straight from the cached uint8 arrays: one fancy-index per batch, no per-image Python."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class TensorBatches(torch.utils.data.Dataset):
    """Indexed by a list of indices, returns the whole batch: (uint8 images, int64 labels)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


class EpochBatchSampler(Sampler[torch.Tensor]):
    """Yields index batches; the shuffle order is a pure function of (seed, epoch).

    Lightning calls `set_epoch` before every epoch, so a run resumed at epoch k sees exactly the
    batches an uninterrupted run would have seen at epoch k.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.size + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        yield from order.split(self.batch_size)


def batch_loader(
    images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    data = TensorBatches(images, labels)
    # batch_size=None turns off the DataLoader's per-item collation: the sampler hands out whole batches.
    return DataLoader(
        data, batch_size=None, sampler=EpochBatchSampler(len(data), batch_size, shuffle, seed),
        num_workers=num_workers, persistent_workers=num_workers > 0,
    )  # fmt: skip
