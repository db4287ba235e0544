"""Batches straight from the cached uint8 arrays: one fancy-index per batch, no per-image Python.

Arrays may be memory-mapped (caches larger than `data.memory_budget_mb`); each batch then reads
its rows in index order. Under DDP every process takes its own shard of each epoch's order.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


class TensorBatches(torch.utils.data.Dataset):
    """A subset (`indices`) of the cached arrays; indexed by a tensor of positions in that subset,
    returns the whole batch: (uint8 images, int64 labels). The subset is never copied out."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
        self.mapped = isinstance(images, np.memmap)
        self.images = images if self.mapped else torch.from_numpy(np.ascontiguousarray(images))
        self.indices = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[index]
        if self.mapped:
            # Sorted reads are sequential on disk; the order inside a batch does not matter to SGD.
            rows = rows.sort().values
            return torch.from_numpy(self.images[rows.numpy()]), self.labels[rows]
        # index_select: one gather kernel, several times cheaper than advanced indexing on 4-D uint8.
        return self.images.index_select(0, rows), self.labels.index_select(0, rows)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochBatchSampler(Sampler[torch.Tensor]):
    """Yields index batches; the order is a pure function of (seed, epoch), sharded across processes.

    Lightning calls `set_epoch` before every epoch, so a run resumed at epoch k sees exactly the
    batches an uninterrupted run would have seen at epoch k. Under DDP (read when iteration starts,
    after the process group exists) each rank takes every world-th index of a padded order, so all
    ranks run the same number of batches, as DistributedSampler does.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard_size(self) -> int:
        _, world = _rank_and_world()
        return -(-self.size // world)

    def __len__(self) -> int:
        return -(-self._shard_size() // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        rank, world = _rank_and_world()
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        if world > 1:
            padded = self._shard_size() * world
            order = torch.cat([order, order[: padded - self.size]])[rank::world]
        yield from order.split(self.batch_size)


def batch_loader(
    images: np.ndarray, labels: np.ndarray, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """Batches of `images[indices]`, `labels[indices]`, shuffled per epoch when `shuffle`."""
    data = TensorBatches(images, labels, indices)
    # batch_size=None turns off the DataLoader's per-item collation: the sampler hands out whole batches.
    return DataLoader(
        data, batch_size=None, sampler=EpochBatchSampler(len(data), batch_size, shuffle, seed),
        num_workers=num_workers, persistent_workers=num_workers > 0,
    )  # fmt: skip
