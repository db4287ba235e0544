"""Benchmark: `champion data prepare` of a folder of JPEGs, as a whole command from an empty cache,
against torchvision's ImageFolder + Resize/CenterCrop/PILToTensor through a DataLoader with one
worker per core, iterated once over the same files to the same size.

Usage: .venv/bin/python bench/ingest_images.py [--images N] [--classes K] [--size PX] [--seed S] [--folder DIR]

Generates N seeded JPEGs (200-500 px, some greyscale; bench/synthetic_images.py) into a temporary
folder (or reuses --folder), then runs the command (interpreter start, imports, hashing, decoding,
resizing, splitting and writing the entry all count) and the torchvision pass, one after the other.
torchvision is timed in this process from building the ImageFolder to the last batch, its imports
excluded: the comparison leans its way. Prints both times, images/s, the ratio, the command's peak
memory and how far the two outputs differ.

Then the floor: the same files only read and JPEG-decoded (Pillow's libjpeg-turbo, at the reduced
DCT scale champion decodes at, nothing resized, hashed or written) on a process per core. No
pipeline that decodes with that library can finish faster, so torchvision's time over the floor's is
the largest ratio any such pipeline could show here.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_command import cores, prepare  # noqa: E402
from synthetic_images import make_jpeg_folder  # noqa: E402


def time_torchvision(folder: Path, size: int, workers: int) -> tuple[float, float, np.ndarray]:
    """(wall seconds, CPU seconds of this process and its workers, the images)."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import CenterCrop, Compose, PILToTensor, Resize

    def cpu() -> float:
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime

    started, cpu_before = time.perf_counter(), cpu()
    ds = ImageFolder(str(folder), transform=Compose([Resize(size), CenterCrop(size), PILToTensor()]))
    batches = [images for images, _ in DataLoader(ds, batch_size=256, num_workers=workers)]  # workers are joined at the end
    return time.perf_counter() - started, cpu() - cpu_before, torch.cat(batches).numpy()


def _decode_only(path: str, size: int) -> int:
    from PIL import Image

    from champion.ingest.decode import fitted_size

    with Image.open(path) as im:
        im.draft("RGB", fitted_size(im.size, (size, size), "shorter_side"))
        im.load()
        return im.width


def time_decode_floor(files: list[Path], size: int, workers: int) -> float:
    """Wall seconds to read and decode every file at champion's DCT scale, `workers` processes, nothing else."""
    import functools
    from multiprocessing import get_context

    with get_context("fork").Pool(workers) as pool:
        pool.map(abs, range(workers))  # the workers are up before the clock starts
        started = time.perf_counter()
        pool.map(functools.partial(_decode_only, size=size), [str(f) for f in files], chunksize=64)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="number of JPEGs to generate")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="output side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--folder", type=Path, help="an existing folder of class sub-folders to use instead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder = args.folder
        if folder is None:
            started = time.perf_counter()
            folder = make_jpeg_folder(Path(tmp) / "images", args.images, args.classes, args.seed)
            print(f"generated {args.images} JPEGs in {time.perf_counter() - started:.1f} s")
        files = list(folder.rglob("*.jpg"))
        n = len(files)
        print(f"{n} JPEGs, {sum(f.stat().st_size for f in files) / n / 1024:.1f} KiB average, to {args.size}x{args.size} RGB, {cores()} cores")
        for f in files:
            f.read_bytes()  # both sides read from the page cache
        import torchvision.datasets  # noqa: F401 - imported before timing: torchvision's imports are not counted

        run = prepare(folder, Path(tmp) / "cache", args.size)
        ref_s, ref_cpu, ref = time_torchvision(folder, args.size, cores())
        champ = np.load(Path(run.values["DATA_PATH"]) / "images.npy", mmap_mode="r")
        floor_s = time_decode_floor(files, args.size, cores())

    print(f"champion data prepare (whole command, empty cache): {run.wall_s:.2f} s, {n / run.wall_s:.0f} images/s, "
          f"{run.cpu_s:.1f} CPU s; peak RSS {run.peak_mib:.0f} MiB (largest worker {run.worker_peak_mib:.0f} MiB)")  # fmt: skip
    print(f"torchvision ImageFolder + DataLoader({cores()} workers): {ref_s:.2f} s, {n / ref_s:.0f} images/s, {ref_cpu:.1f} CPU s")
    print(f"ratio champion/torchvision: {ref_s / run.wall_s:.2f}x wall, {ref_cpu / run.cpu_s:.2f}x CPU (the CPU ratio holds up better on a busy machine)")
    print(f"floor: read + JPEG decode only at champion's DCT scale, {cores()} processes: {floor_s:.2f} s; "
          f"torchvision / floor: {ref_s / floor_s:.2f}x (no pipeline decoding with libjpeg-turbo beats this ratio); "
          f"champion / floor: {run.wall_s / floor_s:.2f}x the floor")  # fmt: skip
    if champ.shape == ref.shape:
        # ImageFolder lists files in the same sorted order as champion's entry.
        diff = np.abs(np.asarray(champ).astype(np.int16) - ref.astype(np.int16))
        print(f"outputs {champ.shape}: mean |difference| {diff.mean():.2f} grey levels, max {diff.max()}")
    else:
        print(f"outputs differ in shape: champion {champ.shape}, torchvision {ref.shape}")


if __name__ == "__main__":
    main()
