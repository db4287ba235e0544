"""Benchmark: `champion data prepare` at 2,000, 20,000 and 100,000 images: time per image should
stay about constant and peak memory flat, for decoded images stream into the cache entry.

Usage: .venv/bin/python bench/ingest_scale.py [--counts 2000 20000 100000] [--size PX] [--images-dir DIR]

Generates small seeded JPEGs (48-96 px, so that 100,000 take about a minute to write; the
decoding cost per image is not the point here, its growth is) into one temporary folder, adding
images for each larger count (or uses DIR/n<count>, generating it there once, with --images-dir), and
runs the whole command from an empty cache for each count.
Prints seconds, microseconds per image (wall and CPU) and the peak resident memory (VmHWM, sampled from /proc) of
the command and of its largest decoding worker.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_command import cores, prepare  # noqa: E402


def add_small_jpegs(root: Path, start: int, stop: int, classes: int = 10) -> None:
    """Images `start` .. `stop - 1`, each seeded by its number: smooth colour plus mild noise."""
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        h, w = (int(v) for v in rng.integers(48, 97, size=2))
        grid = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR), dtype=np.int16)
        img = np.clip(img + rng.integers(-6, 7, size=img.shape), 0, 255).astype(np.uint8)
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:06d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--size", type=int, default=64, help="output side in pixels")
    parser.add_argument("--images-dir", type=Path, help="keep the generated images here (DIR/n<count>) and reuse them")
    args = parser.parse_args()

    print(f"{cores()} cores; output {args.size}x{args.size} RGB")
    print(f"{'images':>8} {'seconds':>8} {'us/image':>9} {'CPU us/image':>13} {'peak MiB':>9} {'worker MiB':>11} {'entry MiB':>10}")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-scale-") as tmp:
        root, have = Path(tmp) / "images", 0
        for count in sorted(args.counts):
            if args.images_dir is not None:
                root = args.images_dir / f"n{count}"
                if not root.is_dir():
                    add_small_jpegs(root, 0, count)
            else:
                add_small_jpegs(root, have, count)
                have = count
            cache = Path(tmp) / f"cache-{count}"
            run = prepare(root, cache, args.size)
            entry_mib = (Path(run.values["DATA_PATH"]) / "images.npy").stat().st_size / 2**20
            print(f"{count:>8} {run.wall_s:>8.2f} {run.wall_s / count * 1e6:>9.0f} {run.cpu_s / count * 1e6:>13.0f} "
                  f"{run.peak_mib:>9.0f} {run.worker_peak_mib:>11.0f} {entry_mib:>10.0f}", flush=True)  # fmt: skip
            time.sleep(0.5)


if __name__ == "__main__":
    main()
