"""Benchmark: training-input throughput, batches/s from champion's cache (`batch_loader` over the
prepared uint8 arrays, in-process, plus training's `x.float().div_(255)`) against the usual
torchvision DataLoader over the same JPEGs (ImageFolder, Resize+CenterCrop+ToTensor+Normalize,
2 worker processes).

Usage: .venv/bin/python bench/loader.py [--images N] [--classes K] [--size PX] [--batch-size B] [--seed S]

Generates N seeded JPEGs (bench/synthetic_images.py) and prepares them into a temporary cache
(not timed), then times one full shuffled pass of each loader after one warm-up batch, one after the
other. Prints batches/s, the ratio, and whether it meets the bar of 10x on 2 cores.

Run it on an otherwise idle machine: another busy process makes each of champion's small
two-thread (OpenMP) per-batch ops wait for a scheduler slice, about 0.5 -> 25 ms a batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_images import make_jpeg_folder  # noqa: E402

BAR = 10.0
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def one_pass(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], step: Callable[[torch.Tensor], torch.Tensor]) -> tuple[int, float]:
    """Time every batch after the first (which pays for worker start-up); return (timed batches, seconds)."""
    it = iter(batches)
    step(next(it)[0])
    n, started = 0, time.perf_counter()
    for x, _ in it:
        step(x)
        n += 1
    return n, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="number of JPEGs to generate")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and of the shuffle")
    args = parser.parse_args()

    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor

    from champion.config import DataConfig
    from champion.ingest import prepare
    from champion.train.loader import batch_loader

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        folder = make_jpeg_folder(Path(tmp) / "images", args.images, args.classes, args.seed)
        cfg = DataConfig(source=str(folder), image_size=(args.size, args.size), channels=3, cache_dir=str(Path(tmp) / "cache"))
        data = prepare(cfg, seed=args.seed)  # not timed: the cache is built once, read every epoch

        # Every prepared image, like the torchvision side.
        champion = batch_loader(
            data.images, data.labels, np.arange(len(data.labels)), batch_size=args.batch_size, shuffle=True,
            seed=args.seed, num_workers=0,
        )
        champ_n, champ_s = one_pass(champion, lambda x: x.float().div_(255))

        transform = Compose([Resize(args.size), CenterCrop(args.size), ToTensor(), Normalize(MEAN, STD)])
        torch.manual_seed(args.seed)
        reference = DataLoader(ImageFolder(str(folder), transform=transform), batch_size=args.batch_size, shuffle=True, num_workers=2)
        ref_n, ref_s = one_pass(reference, lambda x: x)

    champ_rate, ref_rate = champ_n / champ_s, ref_n / ref_s
    ratio = champ_rate / ref_rate
    print(f"{len(data.labels)} images of {args.size}x{args.size}x3, batch {args.batch_size}, {os.cpu_count()} cores")
    print(f"champion batch_loader (cache, 0 workers, + float/255): {champ_n} batches in {champ_s * 1000:.1f} ms, {champ_rate:.0f} batches/s")
    print(f"torchvision DataLoader (JPEGs, 2 workers):             {ref_n} batches in {ref_s * 1000:.1f} ms, {ref_rate:.1f} batches/s")
    print(f"ratio champion/torchvision: {ratio:.1f}x; bar >= {BAR:.0f}x on 2 cores: {'met' if ratio >= BAR else 'NOT met'}")


if __name__ == "__main__":
    main()
