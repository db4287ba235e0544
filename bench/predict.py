"""Benchmark: `champion predict` against a plain loop over the same folder, and its memory at scale.

Usage: .venv/bin/python bench/predict.py [--store DIR] [--images N] [--scale 2000,20000,100000]

1. Throughput. N seeded photo-sized JPEGs (200-500 px, bench/synthetic_images.py) in class folders,
   classified by the default digits model (`digits-cnn-onnx@deploy`; trained into a temporary store
   unless `--store` names a folder whose mlflow.db holds it). The plain loop is what a user writes:
   torchvision's `ImageFolder` with Grayscale + Resize + CenterCrop + ToTensor, a `DataLoader` (its
   default, no worker processes; and again with one worker process per core), and the same ONNX
   Runtime session; champion is
   `champion.inference.predict.run` writing a CSV, on the same session. One after the other, in
   one run; the ratio is plain loop time / champion time.
2. Memory at scale. `champion predict DIR --output FILE --quiet` as a process on folders of 2,000,
   20,000 and 100,000 small JPEGs: time per image and peak RSS (the process's VmHWM) of each.
   Flat RSS is the claim: rows are streamed, and decoding is bounded by the batches in flight.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_images import make_jpeg_folder  # noqa: E402

BIN = Path(sys.executable).parent


def plain_loop(folder: Path, session, size: tuple[int, int], workers: int) -> tuple[float, int]:
    """torchvision ImageFolder + DataLoader (`workers` processes; 0: the default, in the loop) + the ONNX session."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import CenterCrop, Compose, Grayscale, Resize, ToTensor

    started = time.perf_counter()
    ds = ImageFolder(str(folder), transform=Compose([Grayscale(1), Resize(size[0]), CenterCrop(size), ToTensor()]))
    loader = DataLoader(ds, batch_size=64, num_workers=workers)
    name = session.get_inputs()[0].name
    n = 0
    for x, _ in loader:
        session.run(None, {name: x.numpy()})[0].argmax(1)
        n += len(x)
    return time.perf_counter() - started, n


def small_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """`n` small JPEGs (64 x 48) in 10 class folders, from 256 distinct files written over and over."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(256):
        arr = np.clip(rng.normal(128, 60, (48, 64, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=85)
        pool.append(buf.getvalue())
    for k in range(10):
        (root / f"class_{k:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"class_{i % 10:02d}" / f"{i:06d}.jpg").write_bytes(pool[i % len(pool)])
    return root


def run_process(args: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a child process.

    The peak is the child's own VmHWM, sampled every 20 ms: the rusage of a child forked from this
    process would count this process's memory (torch, the DataLoader) as the child's.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.02)
    if proc.returncode not in (0, 5):
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}")
    return time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="a folder whose mlflow.db holds digits-cnn-onnx@deploy")
    parser.add_argument("--images", type=int, default=2000, help="photo-sized JPEGs for the throughput comparison")
    parser.add_argument("--scale", default="2000,20000,100000", help="folder sizes for the memory test ('' to skip)")
    args = parser.parse_args()
    store = (args.store or Path(tempfile.mkdtemp(prefix="champion-bench-predict-"))).resolve()
    if not (store / "mlflow.db").exists():
        subprocess.run([str(BIN / "champion"), "run", "--quiet", "--epochs", "1"], cwd=store, check=True, stdout=subprocess.DEVNULL)
    os.chdir(store)

    from champion.deploy.model import load_model
    from champion.inference import predict

    model = load_model("digits-cnn")
    pre = model.preprocessing
    print(f"model {model.registry_name} v{model.version}: {pre.channels}x{pre.image_size[0]}x{pre.image_size[1]}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        folder = make_jpeg_folder(Path(tmp) / "images", args.images, 10, 0)
        import torchvision.datasets  # noqa: F401 - imported before either side is timed

        predict.run(model, str(folder), str(Path(tmp) / "warm.csv"))  # page cache and session warm for both
        champ = predict.run(model, str(folder), str(Path(tmp) / "p.csv"))
        print(f"champion predict (library, CSV out): {champ.seconds:.2f} s, {champ.per_second:.0f} images/s ({champ.images} images)")
        for workers in (0, os.cpu_count() or 1):
            plain_s, n = plain_loop(folder, model.session, pre.image_size, workers)
            how = "the default, no worker processes" if workers == 0 else f"{workers} worker processes, one per core"
            print(f"plain loop (ImageFolder + DataLoader, {how} + ONNX Runtime): {plain_s:.2f} s, {n / plain_s:.0f} images/s;"
                  f" ratio champion/plain: {plain_s / champ.seconds:.2f}x")

    sizes = [int(s) for s in args.scale.split(",") if s]
    if sizes:
        print(f"{'images':>8} {'seconds':>8} {'ms/image':>9} {'peak RSS':>9}   (champion predict DIR --output FILE, a process)")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-predict-scale-") as tmp:
            folder = small_jpegs(Path(tmp) / "images", n)
            seconds, rss = run_process([str(BIN / "champion"), "predict", str(folder), "--output", str(Path(tmp) / "p.csv"), "--quiet"], store)
            print(f"{n:>8} {seconds:>8.1f} {1000 * seconds / n:>9.3f} {rss:>6.0f} MiB")


if __name__ == "__main__":
    main()
