"""Data sources: what a source holds (labels, classes, its own splits) and how to decode any part of it.

A source answers three questions, in the order `ingest.prepare` asks them:

- `content_digest`: a hash of its content, cheap on a repeat (file hashes come from the hash index);
- `plan`: labels, class names and the splits it defines itself, without decoding any image;
- `decode(rows)`: the images of those rows only, so that a gate needing the validation split
  decodes only that.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from champion.config import DataConfig
from champion.ingest.decode import IMAGE_SUFFIXES, decode, set_pixel_limit
from champion.errors import ConfigError, DataError
from champion.ingest.splits import SPLITS
from champion.types import Progress

# sklearn (the digits dataset) and torch (resizing arrays) are imported inside the functions that need
# them: a serving process imports champion.ingest to decode images and must not load either.

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FileDigest = Callable[[Path], str]  # path -> sha256 hex


@dataclass
class Plan:
    """What a source holds, known before any image is decoded."""

    labels: np.ndarray  # int64 label of every item, in the source's order
    classes: list[str]
    fixed: dict[str, np.ndarray] = field(default_factory=dict)  # splits the source defines itself


@dataclass
class Decoded:
    """Images of the requested rows that could be read."""

    images: np.ndarray  # (len(kept), C, H, W) uint8
    kept: np.ndarray  # sorted item indices the images belong to
    skipped: list[str] = field(default_factory=list)  # "path (reason)" of rows that could not be read


class Source:
    """A data source: knows its content digest, its labels and how to decode any rows."""

    files: dict[str, str]  # relative path -> sha256, recorded in the manifest

    def content_digest(self, progress: Progress | None, file_digest: FileDigest) -> str:
        raise NotImplementedError

    def plan(self) -> Plan:
        raise NotImplementedError

    def decode(self, cfg: DataConfig, rows: np.ndarray, progress: Progress | None) -> Decoded:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def resolve(spec: str, downloadable: tuple[str, ...]) -> Source:
    """The source for a local `data.source` value (remote ones are brought to disk first).

    Raises:
        ConfigError: `spec` names nothing that can be a source (exit 2: the configuration is wrong).
    """
    if spec == "digits":
        return Digits()
    path = Path(spec).expanduser()
    if "://" in spec:
        raise ConfigError(f"data.source {spec!r}: only s3:// URLs are supported as remote sources")
    if not path.exists():
        raise ConfigError(
            f"data.source {spec!r}: no such folder. Give digits, {', '.join(downloadable)}, s3://bucket/prefix, "
            "or a folder of class sub-folders or MNIST IDX files"
        )
    if not path.is_dir():
        raise ConfigError(f"data.source {spec!r} is a file; give the folder that holds the images")
    if _find_idx(path, "train_images"):
        return IdxFolder(path)
    return ImageFolder(path)


class Digits(Source):
    """scikit-learn's 8x8 handwritten digits (1797 images), shipped with the package: works offline."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Pixel values are 0..16; scale to the full uint8 range like any other greyscale image.
        self.images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
        self.labels = bunch.target.astype(np.int64)
        self.files = {}

    def content_digest(self, progress: Progress | None, file_digest: FileDigest) -> str:
        return hashlib.sha256(self.images.tobytes() + self.labels.tobytes()).hexdigest()

    def plan(self) -> Plan:
        return Plan(self.labels, [str(i) for i in range(10)])

    def decode(self, cfg: DataConfig, rows: np.ndarray, progress: Progress | None) -> Decoded:
        return Decoded(fit(self.images[rows], cfg.channels, cfg.image_size), rows)

    def describe(self) -> str:
        return "digits"


class IdxFolder(Source):
    """A folder with the four MNIST-format IDX files (gzipped or not); t10k becomes the test split."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: dict[str, Path] = {}
        for key in IDX_NAMES:
            p = _find_idx(folder, key)
            if p is None:
                raise DataError(f"{folder} has {IDX_NAMES['train_images']} but not {IDX_NAMES[key]}[.gz]; all four IDX files are needed")
            self.paths[key] = p
        self.files = {}

    def content_digest(self, progress: Progress | None, file_digest: FileDigest) -> str:
        self.files = {self.paths[key].name: file_digest(self.paths[key]) for key in sorted(self.paths)}
        h = hashlib.sha256()
        for key in sorted(self.paths):
            h.update(self.files[self.paths[key].name].encode())
        return h.hexdigest()

    def plan(self) -> Plan:
        train, test = _read_idx(self.paths["train_labels"]), _read_idx(self.paths["test_labels"])
        labels = np.concatenate([train, test])
        classes = [str(i) for i in range(int(labels.max()) + 1)]
        if self.folder.name == "fashion_mnist" and len(classes) == len(FASHION_CLASSES):
            classes = list(FASHION_CLASSES)  # the downloaded Fashion-MNIST: its published class names
        return Plan(labels, classes, {"train": np.arange(len(train)), "test": np.arange(len(train), len(labels))})

    def decode(self, cfg: DataConfig, rows: np.ndarray, progress: Progress | None) -> Decoded:
        parts = []
        for part in ("train", "test"):
            images, labels = _read_idx(self.paths[f"{part}_images"]), _read_idx(self.paths[f"{part}_labels"])
            if len(images) != len(labels):
                raise DataError(f"{self.folder}: {part} images and labels differ in count")
            parts.append(images)
        images = np.concatenate(parts)
        return Decoded(fit(images[rows], cfg.channels, cfg.image_size), rows)

    def describe(self) -> str:
        return str(self.folder.resolve())


class ImageFolder(Source):
    """Class sub-folders of images, optionally already split into train/, val/ and test/."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        presplit = [s for s in SPLITS if (folder / s).is_dir()]
        if presplit and "train" not in presplit:
            raise DataError(f"{folder} has {'/'.join(presplit)}/ but no train/ folder")
        self.parts = {s: folder / s for s in presplit} if presplit else {"train": folder}
        self.classes = sorted(d.name for d in self.parts["train"].iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"{self.parts['train']} holds no class sub-folders; expected one folder of images per class")
        self.items: list[tuple[str, Path, int]] = []  # (split, file, label)
        empty = []
        for split, root in self.parts.items():
            for label, name in enumerate(self.classes):
                class_dir = root / name
                files = sorted(
                    p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in IMAGE_SUFFIXES
                ) if class_dir.is_dir() else []  # fmt: skip
                if split == "train" and not files:
                    empty.append(str(class_dir))
                self.items.extend((split, p, label) for p in files)
        if empty:
            raise DataError("class folders with no images: " + ", ".join(empty) + f" (image files end in {', '.join(sorted(IMAGE_SUFFIXES))})")
        extra = {d.name for root in self.parts.values() for d in root.iterdir() if d.is_dir()} - set(self.classes)
        if extra - set(SPLITS):
            raise DataError(f"{folder}: classes {sorted(extra - set(SPLITS))} appear in val/ or test/ but not in train/")
        self.files = {}

    def content_digest(self, progress: Progress | None, file_digest: FileDigest) -> str:
        paths = [p for _, p, _ in self.items]
        digests = parallel_map(file_digest, paths, "hashing images", progress)
        self.files = {str(p.relative_to(self.folder)): d for p, d in zip(paths, digests)}
        h = hashlib.sha256()
        for (split, p, label), d in zip(self.items, digests):
            h.update(f"{split}\0{p.relative_to(self.folder)}\0{label}\0{d}\n".encode())
        return h.hexdigest()

    def plan(self) -> Plan:
        labels = np.array([label for _, _, label in self.items], dtype=np.int64)
        split_of = np.array([split for split, _, _ in self.items])
        return Plan(labels, self.classes, {s: np.flatnonzero(split_of == s) for s in self.parts})

    def decode(self, cfg: DataConfig, rows: np.ndarray, progress: Progress | None) -> Decoded:
        set_pixel_limit(cfg.max_image_pixels)
        paths = [self.items[i][1] for i in rows]
        decoded = parallel_map(
            lambda p: decode(p, cfg.image_size, cfg.channels, cfg.resize, cfg.max_image_pixels), paths, "decoding images", progress
        )
        bad = [f"{p} ({err})" for p, (img, err) in zip(paths, decoded) if img is None]
        if bad and cfg.on_error == "fail":
            raise DataError(
                f"{len(bad)} unreadable image(s):\n  " + "\n  ".join(bad) + "\nFix or remove them, or set data.on_error=skip"
            )
        if len(bad) > cfg.max_skipped_fraction * len(paths):
            raise DataError(
                f"{len(bad)} of {len(paths)} images are unreadable, more than data.max_skipped_fraction="
                f"{cfg.max_skipped_fraction}; the source looks broken. First ones:\n  " + "\n  ".join(bad[:20])
            )
        keep = [i for i, (img, _) in enumerate(decoded) if img is not None]
        if not keep:
            raise DataError(f"no readable images under {self.folder}")
        images = np.stack([decoded[i][0] for i in keep])
        return Decoded(images, np.asarray(rows)[keep], skipped=bad)

    def describe(self) -> str:
        return str(self.folder.resolve())


def fit(images: np.ndarray, channels: int, image_size: tuple[int, int]) -> np.ndarray:
    """Bring an (N, C, H, W) uint8 array to `channels` and `image_size`, all at once.

    Each image is resized on its own, so fitting a subset of rows gives exactly those rows of the
    whole. Torch is imported only when a resize is needed (arrays, never files: see `champion.ingest.decode`).
    """
    if images.shape[1] != channels:
        images = np.repeat(images, channels, axis=1) if images.shape[1] == 1 else images.mean(1, keepdims=True).astype(np.uint8)
    if tuple(images.shape[2:]) != tuple(image_size) and len(images):
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(images)).float()
        t = F.interpolate(t, size=tuple(image_size), mode="bilinear", antialias=True, align_corners=False)
        images = t.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return images


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: list[T], what: str, progress: Progress | None) -> list[R]:
    """Thread-parallel map (decoders and hashing release the GIL), reporting progress."""
    out = []
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        for i, result in enumerate(pool.map(fn, items), 1):
            out.append(result)
            if progress and (i % 256 == 0 or i == len(items)):
                progress(what, i, len(items))
    return out


def _find_idx(folder: Path, key: str) -> Path | None:
    for suffix in (".gz", ""):
        p = folder / (IDX_NAMES[key] + suffix)
        if p.is_file():
            return p
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        magic = struct.unpack(">I", data[:4])[0]
        if magic == 2051:
            n, rows, cols = struct.unpack(">III", data[4:16])
            return np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, rows, cols)
        if magic == 2049:
            (n,) = struct.unpack(">I", data[4:8])
            return np.frombuffer(data, np.uint8, offset=8).reshape(n).astype(np.int64)
        raise ValueError(f"magic number {magic} is neither 2051 (images) nor 2049 (labels)")
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DataError(f"{path} is not a readable MNIST IDX file: {exc}") from None
