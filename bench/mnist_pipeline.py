"""Benchmark: `champion run` on MNIST from an empty cache and an empty MLflow store, against the
plain PyTorch reference (../shared/bench/reference_mnist.py) measured in the same run.

Usage: .venv/bin/python bench/mnist_pipeline.py [--mnist DIR] [--reference-epochs N]

Prints the wall time of each (process start to exit, imports included), champion's logged
test_accuracy on the canonical 10k test split, and the ratios. Runs one after the other, never
at once, so they do not share the two cores.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return wall, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, default=SHARED / "data" / "mnist", help="folder with the four IDX files")
    parser.add_argument("--reference-epochs", type=int, default=1)
    args = parser.parse_args()
    mnist = args.mnist.resolve()
    reference = SHARED / "bench" / "reference_mnist.py"
    if not (mnist / "train-images-idx3-ubyte.gz").is_file() or not reference.is_file():
        sys.exit(f"needs {mnist} (MNIST IDX files) and {reference}")
    champion = Path(sys.executable).with_name("champion")

    with tempfile.TemporaryDirectory(prefix="bench-champion-") as tmp:
        work = Path(tmp)
        wall, stdout = timed([
            str(champion), "run", "--config", str(ROOT / "configs" / "mnist.yaml"), "--quiet",
            "--set", f"data.source={mnist}", "--set", f"data.cache_dir={work / 'cache'}",
        ], work)  # fmt: skip
        values = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
        run = mlflow.MlflowClient().get_run(values["RUN_ID"])
        metrics = run.data.metrics
        epochs = len(mlflow.MlflowClient().get_metric_history(values["RUN_ID"], "epoch_time"))
        # A second run reuses the cache and is rejected by Gate 1: measures the cached path.
        started = time.perf_counter()
        again = subprocess.run([
            str(champion), "run", "--config", str(ROOT / "configs" / "mnist.yaml"), "--quiet",
            "--set", f"data.source={mnist}", "--set", f"data.cache_dir={work / 'cache'}",
        ], cwd=work, capture_output=True, text=True)  # fmt: skip
        again_wall = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp:
        ref_wall, ref_out = timed([sys.executable, str(reference), str(mnist), str(args.reference_epochs)], Path(tmp))
    accs = [float(a) for a in re.findall(r"epoch \d+ acc ([0-9.]+)", ref_out)]

    print(f"champion run (mnist.yaml, empty cache and store): {wall:.1f} s wall, imports to deployed model")
    print(f"  result {values.get('RESULT')}, gate 2 {values.get('GATE2_RESULT')}, {epochs} epochs, "
          f"test_accuracy {metrics['test_accuracy']:.4f}, best_val_accuracy {metrics['best_val_accuracy']:.4f}, "
          f"last epoch_time {metrics['epoch_time']:.1f} s")
    print(f"champion run again (cache hit, Gate 1 rejects: exit {again.returncode}): {again_wall:.1f} s wall")
    print(f"reference_mnist.py, {args.reference_epochs} epoch(s): {ref_wall:.1f} s wall, test accuracy {accs[-1]:.4f}")
    print(f"ratio reference/champion wall: {ref_wall / wall:.2f}x "
          f"(champion: whole pipeline to {metrics['test_accuracy']:.2%}; reference: training only to {accs[-1]:.2%})")


if __name__ == "__main__":
    main()
