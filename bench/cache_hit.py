"""Benchmark: preparing MNIST a second time (a cache hit) must take under one second.

Usage: .venv/bin/python bench/cache_hit.py [--mnist DIR]

Times `champion.ingest.prepare` on the folder of the four MNIST IDX files with the settings of
configs/mnist.yaml, into a temporary cache: first from an empty cache (cold; includes the lazy
import of scikit-learn for the split), then again in the same process (hit), then again in a fresh
process timing only the `prepare` call (its imports and the whole process are reported apart).
Prints each time, the cold/hit ratio, and whether the hit meets the one-second bar.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAR_S = 1.0
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Run in the fresh process: argv[1] is the MNIST folder, argv[2] the cache; prints one JSON line.
FRESH = """
import json, sys, time
started = time.perf_counter()
from champion.config import DataConfig
from champion.ingest import prepare
imported = time.perf_counter()
cfg = DataConfig(source=sys.argv[1], image_size=(28, 28), channels=1, validation_split=0.1, cache_dir=sys.argv[2])
data = prepare(cfg, seed=0)
print(json.dumps({"imports": imported - started, "prepare": time.perf_counter() - imported, "digest": data.digest}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist", help="folder with the four IDX files")
    args = parser.parse_args()
    mnist = args.mnist.resolve()
    missing = [n for n in IDX_FILES if not (mnist / n).is_file() and not (mnist / f"{n}.gz").is_file()]
    if missing:
        sys.exit(f"{mnist} lacks the MNIST IDX file(s) {', '.join(missing)} (.gz or not); give the folder with --mnist DIR")

    started = time.perf_counter()
    from champion.config import DataConfig
    from champion.ingest import prepare

    imports_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="bench-cache-hit-") as tmp:
        cache = Path(tmp) / "cache"
        cfg = DataConfig(source=str(mnist), image_size=(28, 28), channels=1, validation_split=0.1, cache_dir=str(cache))
        started = time.perf_counter()
        cold = prepare(cfg, seed=0)
        cold_s = time.perf_counter() - started
        started = time.perf_counter()
        hit = prepare(cfg, seed=0)
        hit_s = time.perf_counter() - started

        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", FRESH, str(mnist), str(cache)], capture_output=True, text=True)
        process_s = time.perf_counter() - started
        if out.returncode != 0:
            sys.exit(f"the fresh process failed with exit code {out.returncode}:\n{out.stdout}\n{out.stderr}")
        fresh = json.loads(out.stdout.strip().splitlines()[-1])
        entries = [p.name for p in cache.iterdir() if not p.name.startswith(".")]

    same = cold.digest == hit.digest == fresh["digest"] and len(entries) == 1
    print(f"MNIST {cold.images.shape[0]} images {tuple(cold.images.shape[1:])}, entry {cold.digest}: "
          f"{'one entry, reused' if same else f'NOT reused (entries {entries})'}")
    print(f"imports (champion.config, champion.ingest), in-process: {imports_s:.2f} s")
    print(f"prepare, empty cache (cold):            {cold_s:.3f} s")
    print(f"prepare again, same process (hit):      {hit_s:.3f} s")
    print(f"prepare again, fresh process (hit):     {fresh['prepare']:.3f} s "
          f"(its imports {fresh['imports']:.2f} s, whole process {process_s:.2f} s)")
    print(f"ratio cold/hit: {cold_s / hit_s:.1f}x in-process, {cold_s / fresh['prepare']:.1f}x fresh process")
    worst = max(hit_s, fresh["prepare"])
    print(f"bar: hit under {BAR_S:.0f} s: {'met' if worst < BAR_S else 'NOT met'} (slowest hit {worst:.3f} s)")


if __name__ == "__main__":
    main()
