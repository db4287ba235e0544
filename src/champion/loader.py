"""Batches straight from the cached uint8 arrays: one fancy-index per batch, no per-image Python."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler


class TensorBatches(torch.utils.data.Dataset):
    """Indexed by a list of indices, returns the whole batch: (uint8 images, int64 labels)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(index)
        return self.images[idx], self.labels[idx]


def batch_loader(
    images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    data = TensorBatches(images, labels)
    base = RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(data)
    # batch_size=None turns off the DataLoader's per-item collation: the sampler hands out whole batches.
    return DataLoader(
        data, batch_size=None, sampler=BatchSampler(base, batch_size, drop_last=False), num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
