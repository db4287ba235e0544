"""Seeded folders of synthetic JPEGs for the image benchmarks (not a benchmark itself).

Usage: .venv/bin/python bench/synthetic_images.py OUT_DIR [--images N] [--classes K] [--seed S]

Writes OUT_DIR/class_XX/NNNNN.jpg: sizes 200-500 px per side, one in five greyscale, quality 90.
Content is smooth (a colour gradient plus low-frequency blobs) with mild noise, so the files have
the sizes of real photos rather than of flat colour or of pure noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator) -> Image.Image:
    w, h = (int(v) for v in rng.integers(200, 501, size=2))
    grey = rng.random() < 0.2
    c = 1 if grey else 3
    angle = rng.uniform(0, 2 * np.pi)
    xx, yy = np.arange(w, dtype=np.float32) / w, np.arange(h, dtype=np.float32)[:, None] / h
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]  # -1.4..1.4
    start, end = rng.uniform(0, 255, size=(2, c)).astype(np.float32)
    img = start + (end - start) * (ramp + 1.5) / 3.0
    # Low-frequency blobs: a tiny random grid upsampled smoothly.
    grid = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), c), dtype=np.uint8)
    blobs = Image.fromarray(grid[..., 0] if grey else grid).resize((w, h), Image.Resampling.BICUBIC)
    blobs_arr = np.asarray(blobs, dtype=np.float32).reshape(h, w, c)
    img = 0.6 * img + 0.4 * blobs_arr + 6 * rng.standard_normal((h, w, c), dtype=np.float32)
    arr = np.clip(img, 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if grey else arr, "L" if grey else "RGB")


def make_jpeg_folder(root: Path, images: int = 2000, classes: int = 10, seed: int = 0) -> Path:
    """Write `images` JPEGs spread evenly over `classes` class folders under `root`; return `root`."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        (root / f"class_{k:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        _image(rng).save(root / f"class_{i % classes:02d}" / f"{i:05d}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_jpeg_folder(args.out, args.images, args.classes, args.seed)
    files = list(args.out.rglob("*.jpg"))
    print(f"{len(files)} JPEGs, {sum(f.stat().st_size for f in files) / len(files) / 1024:.1f} KiB on average")


if __name__ == "__main__":
    main()
