"""Benchmark: MNIST first runs (`champion run`, new store, empty cache) of an older commit against this
tree, alternating, so that both see the same moments of a noisy machine.

Usage: .venv/bin/python bench/mnist_ab.py REV [--pairs N] [--mnist DIR]

REV is checked out with `git worktree` into a temporary folder and run with PYTHONPATH pointing at
its src/ (the same venv, so the same libraries). Each run's wall time is split at the fit, read from
the stage timings (CHAMPION_TIMINGS): start-up to the first epoch's fit, the fit, and after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAMPION = Path(sys.executable).with_name("champion")


def first_run(src: Path, mnist: Path) -> tuple[float, float, float, float, int]:
    """(wall, to the fit, fit, after the fit, exit code) of one first run with champion from `src`."""
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        env = {**os.environ, "CHAMPION_TIMINGS": f"{tmp}/timings.json", "PYTHONPATH": str(src)}
        cmd = [str(CHAMPION), "run", "--config", str(ROOT / "configs" / "mnist.yaml"), "--quiet",
               "--set", f"data.source={mnist}", "--set", f"data.cache_dir={tmp}/cache"]  # fmt: skip
        started, t0 = time.time(), time.perf_counter()
        done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        fit = next(s for s in json.loads(Path(tmp, "timings.json").read_text())["stages"] if s["stage"] == "fit")
        return wall, fit["start"] - started, fit["end"] - fit["start"], started + wall - fit["end"], done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the older commit")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ab-rev-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.rev], cwd=ROOT, check=True)
        try:
            for _ in range(args.pairs):
                for name, src in ((f"before {args.rev}", old / "src"), ("after (this tree)", ROOT / "src")):
                    wall, to_fit, fit, after, code = first_run(src, args.mnist.resolve())
                    print(f"{name:20s} wall {wall:5.2f} s | to the fit {to_fit:5.2f} | fit {fit:5.2f} | "
                          f"after the fit {after:5.2f} | exit {code}", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
