"""Benchmark: the data a gate reads. Gates need only the validation split; in a fresh container (an
empty cache, as every Argo step has) a full `prepare` would decode the whole data set first.

Usage: .venv/bin/python bench/gate_data.py [--images N] [--size PX] [--validation-split F]

Generates N seeded JPEGs (bench/synthetic_images.py), then times, each from an empty cache,
`ingest.prepare(cfg, seed)` (the whole data set: what the gates called before) and
`ingest.prepare(cfg, seed, splits=("val",))` (what they call now), one after the other, and checks
that both give the same digest and the same validation images. Prints both times and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_images import make_jpeg_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="number of JPEGs to generate")
    parser.add_argument("--size", type=int, default=64, help="output image side in pixels")
    parser.add_argument("--validation-split", type=float, default=0.2, help="data.validation_split")
    args = parser.parse_args()

    from champion.config import DataConfig
    from champion.ingest import prepare

    with tempfile.TemporaryDirectory(prefix="bench-gate-data-") as tmp:
        folder = make_jpeg_folder(Path(tmp) / "images", args.images, classes=10, seed=0)
        timings = {}
        results = {}
        for label, splits in (("full", ("train", "val", "test")), ("val only", ("val",))):
            cfg = DataConfig(
                source=str(folder), image_size=(args.size, args.size), channels=3,
                validation_split=args.validation_split, cache_dir=str(Path(tmp) / f"cache-{len(splits)}"),
            )  # fmt: skip
            started = time.perf_counter()
            results[label] = prepare(cfg, seed=0, splits=splits)
            timings[label] = time.perf_counter() - started
    full, val = results["full"], results["val only"]
    same = full.digest == val.digest and np.array_equal(full.split("val")[0], val.split("val")[0])
    n_val = len(val.split("val")[1])
    print(f"{args.images} JPEGs to {args.size}x{args.size} RGB, {n_val} in the validation split; "
          f"digest and validation images {'identical' if same else 'DIFFERENT'}")
    print(f"prepare, whole data set (empty cache): {timings['full']:.2f} s")
    print(f"prepare, validation split only:        {timings['val only']:.2f} s")
    print(f"ratio: {timings['full'] / timings['val only']:.1f}x")


if __name__ == "__main__":
    main()
