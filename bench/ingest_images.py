"""Benchmark: decode+resize throughput of `champion.ingest.prepare` on a folder of JPEGs, against
torchvision's ImageFolder with Resize+CenterCrop+PILToTensor iterated once in the main process.

Usage: .venv/bin/python bench/ingest_images.py [--images N] [--classes K] [--size PX] [--seed S]

Generates N seeded JPEGs (200-500 px, some greyscale; bench/synthetic_images.py) into a temporary
folder, then times `prepare` from an empty cache (hashing, decoding, resizing, splitting and writing
the entry) and the torchvision pass over the same files to the same output size, one after the
other. Prints both rates in images/s, the ratio, and how far the two outputs differ.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_images import make_jpeg_folder  # noqa: E402


def time_champion(folder: Path, cache: Path, size: int) -> tuple[float, np.ndarray]:
    from champion.config import DataConfig
    from champion.ingest import prepare

    cfg = DataConfig(source=str(folder), image_size=(size, size), channels=3, cache_dir=str(cache))
    started = time.perf_counter()
    data = prepare(cfg, seed=0)
    return time.perf_counter() - started, data.images


def time_torchvision(folder: Path, size: int) -> tuple[float, np.ndarray]:
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import CenterCrop, Compose, PILToTensor, Resize

    started = time.perf_counter()
    ds = ImageFolder(str(folder), transform=Compose([Resize(size), CenterCrop(size), PILToTensor()]))
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return time.perf_counter() - started, images.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="number of JPEGs to generate")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="output side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        started = time.perf_counter()
        folder = make_jpeg_folder(Path(tmp) / "images", args.images, args.classes, args.seed)
        files = list(folder.rglob("*.jpg"))
        kib = sum(f.stat().st_size for f in files) / len(files) / 1024
        print(f"generated {len(files)} JPEGs ({kib:.1f} KiB average, 200-500 px) in {time.perf_counter() - started:.1f} s")
        # prepare() imports these lazily; import them first so both sides are timed without imports.
        started = time.perf_counter()
        import PIL.Image  # noqa: F401
        import sklearn.model_selection  # noqa: F401
        import torchvision.datasets  # noqa: F401

        print(f"imports before timing (PIL, sklearn, torchvision): {time.perf_counter() - started:.1f} s")
        champ_s, champ = time_champion(folder, Path(tmp) / "cache", args.size)
        ref_s, ref = time_torchvision(folder, args.size)

    n = len(files)
    print(f"champion prepare (empty cache, {os.cpu_count()} cores): {champ_s:.2f} s, {n / champ_s:.0f} images/s")
    print(f"torchvision ImageFolder, main process:    {ref_s:.2f} s, {n / ref_s:.0f} images/s")
    print(f"ratio champion/torchvision: {ref_s / champ_s:.2f}x")
    if champ.shape == ref.shape:
        diff = np.abs(champ.astype(np.int16) - ref.astype(np.int16))
        print(f"outputs {champ.shape}: mean |difference| {diff.mean():.2f} grey levels, max {diff.max()}")
    else:
        print(f"outputs differ in shape: champion {champ.shape}, torchvision {ref.shape}")


if __name__ == "__main__":
    main()
