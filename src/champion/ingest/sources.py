"""Data sources: what a source holds (labels, classes, its own splits) and how to decode any part of it.

A source answers three questions, in the order `ingest.prepare` asks them:

- `content_digest`: a hash of its content, cheap on a repeat (file hashes come from the hash index);
- `plan`: labels, class names and the splits it defines itself, without decoding any image;
- `decode(rows)`: the images of those rows only, so that a gate needing the validation split
  decodes only that. They come in chunks of at most `CHUNK` rows, in order, so that the caller can
  write them out as they come: memory does not grow with the size of the source.

Image files are decoded on a pool of processes, one task per chunk of files: the Python around each
decode holds the GIL for about as long as Pillow's decoder releases it, so threads stop scaling at
about one core and a half, and a task (a future) per image costs nearly as much as decoding it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import multiprocessing
import os
import struct
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from champion.config import DataConfig
from champion.ingest.decode import IMAGE_SUFFIXES, decode, set_pixel_limit
from champion.errors import ConfigError, DataError
from champion.forked import die_with_parent
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
Hashed = tuple[str, int, int, str]  # (a file's resolved path, size, mtime_ns, sha256): what the hash index keeps
# Rows per decoding task and per chunk handed to the writer: big enough that a task costs far more
# than its future, small enough that the chunks in flight (a few per worker) hold a few MB.
CHUNK = 256
IN_FLIGHT = 2  # chunks queued per worker: keeps every worker busy while the writer catches up


@dataclass
class Plan:
    """What a source holds, known before any image is decoded."""

    labels: np.ndarray  # int64 label of every item, in the source's order
    classes: list[str]
    fixed: dict[str, np.ndarray] = field(default_factory=dict)  # splits the source defines itself


@dataclass
class Decoded:
    """Images of one chunk of the requested rows: those that could be read."""

    images: np.ndarray  # (len(kept), C, H, W) uint8
    kept: np.ndarray  # sorted item indices the images belong to
    skipped: list[str] = field(default_factory=list)  # "path (reason)" of rows that could not be read
    hashed: list[Hashed] = field(default_factory=list)  # when asked: every file of the chunk, in order


class Source:
    """A data source: knows its content digest, its labels and how to decode any rows."""

    files: dict[str, str]  # relative path -> sha256, recorded in the manifest

    def file_digests(self) -> Iterable[tuple[str, str]]:
        """`files`' items, as the manifest writer streams them."""
        return self.files.items()

    def content_digest(self, progress: Progress | None, file_digest: FileDigest) -> str:
        raise NotImplementedError

    def plan(self) -> Plan:
        raise NotImplementedError

    def decode(self, cfg: DataConfig, rows: np.ndarray, progress: Progress | None) -> Iterator[Decoded]:
        """The images of `rows` (sorted item indices), in order, in chunks of at most `CHUNK` rows.

        Raises (once every chunk was yielded):
            DataError: Unreadable images, past what `cfg.on_error` and `cfg.max_skipped_fraction` allow.
        """
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

    def decode(self, cfg: DataConfig, rows: np.ndarray, progress: Progress | None) -> Iterator[Decoded]:
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            yield Decoded(fit(self.images[part], cfg.channels, cfg.image_size), part)

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

    def decode(self, cfg: DataConfig, rows: np.ndarray, progress: Progress | None) -> Iterator[Decoded]:
        parts = []
        for part in ("train", "test"):
            images, labels = _read_idx(self.paths[f"{part}_images"]), _read_idx(self.paths[f"{part}_labels"])
            if len(images) != len(labels):
                raise DataError(f"{self.folder}: {part} images and labels differ in count")
            parts.append(images)
        images = np.concatenate(parts)  # the files' own bytes (55 MB for MNIST); resized chunk by chunk
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            yield Decoded(fit(images[part], cfg.channels, cfg.image_size), part)

    def describe(self) -> str:
        return str(self.folder.resolve())


class ImageFolder(Source):
    """Class sub-folders of images, optionally already split into train/, val/ and test/.

    Every file is held as its path relative to the folder, one str in one list, with labels and
    digests in arrays: Path objects and per-file tuples cost 0.5 KB a file (50 MB for 100,000).
    Items of one split are contiguous, in the order of `self.parts`.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        presplit = [s for s in SPLITS if (folder / s).is_dir()]
        if presplit and "train" not in presplit:
            raise DataError(f"{folder} has {'/'.join(presplit)}/ but no train/ folder")
        self.parts = {s: folder / s for s in presplit} if presplit else {"train": folder}
        self.classes = sorted(d.name for d in self.parts["train"].iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"{self.parts['train']} holds no class sub-folders; expected one folder of images per class")
        self.names: list[str] = []  # every item's path relative to the folder, as the manifest and the digest name it
        counts: list[int] = []  # items per (split, class), in order
        self.spans: dict[str, range] = {}  # split -> its items
        empty = []
        for split, root in self.parts.items():
            begin = len(self.names)
            for name in self.classes:
                class_dir = root / name
                files = sorted(
                    (str(p.relative_to(folder)) for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
                     and p.suffix.lower() in IMAGE_SUFFIXES),
                    key=lambda rel: rel.split(os.sep),  # the order of the Paths' parts
                ) if class_dir.is_dir() else []  # fmt: skip
                if split == "train" and not files:
                    empty.append(str(class_dir))
                self.names += files
                counts.append(len(files))
            self.spans[split] = range(begin, len(self.names))
        if empty:
            raise DataError("class folders with no images: " + ", ".join(empty) + f" (image files end in {', '.join(sorted(IMAGE_SUFFIXES))})")
        extra = {d.name for root in self.parts.values() for d in root.iterdir() if d.is_dir()} - set(self.classes)
        if extra - set(SPLITS):
            raise DataError(f"{folder}: classes {sorted(extra - set(SPLITS))} appear in val/ or test/ but not in train/")
        self.labels = np.repeat(np.tile(np.arange(len(self.classes), dtype=np.int64), len(self.parts)), counts)
        self.digests: np.ndarray | None = None  # raw sha256 (N, 32 uint8) of every item, once known

    @property
    def files(self) -> dict[str, str]:  # type: ignore[override]
        return dict(self.file_digests())

    def file_digests(self) -> Iterator[tuple[str, str]]:
        if self.digests is None:
            return iter(())
        return ((name, d.tobytes().hex()) for name, d in zip(self.names, self.digests))

    def content_digest(self, progress: Progress | None, file_digest: FileDigest) -> str:
        """The hash of every item's split, path, label and file digest; the file digests come from
        `file_digest` unless set in `digests` already (known to the hash index, or read to decode)."""
        if self.digests is None:
            chunks = _PathChunks(self, np.arange(len(self.names)))
            digests = bytearray()
            for part in map_chunks(functools.partial(_map, file_digest), chunks, "hashing images", progress, processes=False):
                digests += b"".join(bytes.fromhex(d) for d in part)
            self.digests = np.frombuffer(bytes(digests), dtype=np.uint8).reshape(-1, 32)
        h = hashlib.sha256()
        for split, span in self.spans.items():
            for i in span:
                h.update(f"{split}\0{self.names[i]}\0{self.labels[i]}\0{self.digests[i].tobytes().hex()}\n".encode())
        return h.hexdigest()

    def plan(self) -> Plan:
        return Plan(self.labels, self.classes, {s: np.arange(span.start, span.stop, dtype=np.int64) for s, span in self.spans.items()})

    def decode(self, cfg: DataConfig, rows: np.ndarray, progress: Progress | None, hash_files: bool = False) -> Iterator[Decoded]:
        """See `Source.decode`; with `hash_files`, each file is also hashed from the bytes decoded
        (read once, not twice) and each chunk says so in `Decoded.hashed`."""
        set_pixel_limit(cfg.max_image_pixels)
        rows = np.asarray(rows, dtype=np.int64)
        job = functools.partial(
            decode_files, image_size=tuple(cfg.image_size), channels=cfg.channels, resize=cfg.resize, max_pixels=cfg.max_image_pixels,
            hash_files=hash_files,
        )  # fmt: skip
        chunks = _PathChunks(self, rows)
        limit = functools.partial(set_pixel_limit, cfg.max_image_pixels)  # forked workers inherit it; spawned ones need it
        what = "hashing and decoding images" if hash_files else "decoding images"
        bad: list[str] = []
        kept = 0
        for k, (images, failed, hashed) in enumerate(map_chunks(job, chunks, what, progress, initializer=limit)):
            start, paths = k * CHUNK, chunks[k] if failed else []
            reasons = dict(failed)
            skipped = [f"{paths[j]} ({reason})" for j, reason in failed]
            keep = np.array([j for j in range(min(CHUNK, len(rows) - start)) if j not in reasons], dtype=np.int64)
            bad += skipped
            kept += len(keep)
            yield Decoded(images, rows[start + keep], skipped, hashed)
        if bad and cfg.on_error == "fail":
            raise DataError(
                f"{len(bad)} unreadable image(s):\n  " + "\n  ".join(bad) + "\nFix or remove them, or set data.on_error=skip"
            )
        if len(bad) > cfg.max_skipped_fraction * len(rows):
            raise DataError(
                f"{len(bad)} of {len(rows)} images are unreadable, more than data.max_skipped_fraction="
                f"{cfg.max_skipped_fraction}; the source looks broken. First ones:\n  " + "\n  ".join(bad[:20])
            )
        if not kept:
            raise DataError(f"no readable images under {self.folder}")

    def describe(self) -> str:
        return str(self.folder.resolve())


class _PathChunks(Sequence[list[Path]]):
    """The files of `rows` in chunks of CHUNK, each list made when asked for: the listing is not held twice."""

    def __init__(self, source: ImageFolder, rows: np.ndarray) -> None:
        self.source, self.rows = source, rows

    def __len__(self) -> int:
        return -(-len(self.rows) // CHUNK)

    def __getitem__(self, k: int) -> list[Path]:  # type: ignore[override]
        k = range(len(self))[k]
        return [self.source.folder / self.source.names[i] for i in self.rows[k * CHUNK : (k + 1) * CHUNK]]


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


def decode_files(
    paths: list[Path], image_size: tuple[int, int], channels: int, resize: str, max_pixels: int, hash_files: bool = False
) -> tuple[np.ndarray, list[tuple[int, str]], list[Hashed]]:
    """Decode a chunk of files: one task of the pool, returning one array (cheap to send back).

    With `hash_files`, each file is read once, hashed (sha256) and decoded from those bytes.

    Returns:
        (the readable images stacked, (len(paths) - len(failed), C, H, W) uint8;
        (position in `paths`, reason) of each file that could not be read;
        (resolved path, size, mtime_ns, sha256) of every file when hashing, stat taken before
        reading, else []: the hash index's key and entry, worked out here rather than in the one
        process that gathers the chunks).
    """
    out = np.empty((len(paths), channels, *image_size), dtype=np.uint8)
    failed, hashed, n = [], [], 0
    for j, path in enumerate(paths):
        source: Path | io.BytesIO = path
        if hash_files:
            st = os.stat(path)
            data = Path(path).read_bytes()
            hashed.append((str(Path(path).resolve()), st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest()))
            source = io.BytesIO(data)
        img, reason = decode(source, image_size, channels, resize, max_pixels)
        if img is None:
            failed.append((j, reason.replace(repr(source), repr(os.fspath(path)))))  # Pillow names the file it was given
        else:
            out[n], n = img, n + 1
    return out[:n], failed, hashed


def workers() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


T = TypeVar("T")
R = TypeVar("R")


def map_chunks(
    fn: Callable[[T], R],
    chunks: Sequence[T],
    what: str,
    progress: Progress | None,
    processes: bool = True,
    initializer: Callable[[], None] | None = None,
) -> Iterator[R]:
    """`fn` over `chunks`, yielded in order, with at most IN_FLIGHT chunks per worker queued or held.

    The chunks run in this process when there is only one (or one core): a pool would cost more than
    it saves. Otherwise on a pool of processes (`processes`; forked where the platform allows, so
    starting one costs milliseconds; `initializer` runs in each) or of threads. `progress` is told
    (what, items done, items in all) after each chunk.
    """
    n = workers()
    total = sum(len(c) for c in chunks)  # type: ignore[arg-type]
    if len(chunks) <= 1 or n == 1:
        pool: Executor | None = None
        if initializer:
            initializer()
    elif processes:
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")  # macOS forks unsafely
        pool = ProcessPoolExecutor(n, context, initializer=functools.partial(_worker_start, os.getpid(), initializer))
    else:
        pool = ThreadPoolExecutor(n)
    done = 0
    pending: deque[tuple[Future, int]] = deque()

    def finished(result: R, size: int) -> R:
        nonlocal done
        done += size
        if progress:
            progress(what, done, total)
        return result

    try:
        for chunk in chunks:
            if pool is None:
                yield finished(fn(chunk), len(chunk))  # type: ignore[arg-type]
                continue
            pending.append((pool.submit(fn, chunk), len(chunk)))  # type: ignore[arg-type]
            if len(pending) >= IN_FLIGHT * n:
                future, size = pending.popleft()
                yield finished(future.result(), size)
        while pending:
            future, size = pending.popleft()
            yield finished(future.result(), size)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _worker_start(parent: int, initializer: Callable[[], None] | None) -> None:
    """In each pool process: die with the parent (a killed `data prepare` must not leave workers behind)."""
    die_with_parent(parent)
    if initializer:
        initializer()


def _map(fn: Callable[[T], R], items: list[T]) -> list[R]:
    return [fn(x) for x in items]


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
