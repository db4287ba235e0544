"""Ingest: turn a data source into a content-addressed cache entry of uint8 arrays with a manifest.

An entry is a folder `<cache_dir>/<digest>/` holding `images.npy` (N, C, H, W uint8), `labels.npy`
(N int64), `splits.npz` (train/val/test indices) and `manifest.json`. The digest covers the source
content and every setting that changes the arrays, so a changed image or setting gives a new entry
and an unchanged one is reused. Entries are written to a temporary folder and renamed into place
when complete: a folder under its final name is always whole.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from champion.config import DataConfig
from champion.errors import DataError

FORMAT_VERSION = 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SPLITS = ("train", "val", "test")

Progress = Callable[[str, int, int], None]  # (description, done, total)


@dataclass
class Dataset:
    """A prepared data set: uint8 images, labels, class names and split indices, read from the cache."""

    digest: str
    source: str
    path: Path
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    splits: dict[str, np.ndarray]
    manifest: dict = field(default_factory=dict)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        idx = self.splits[name]
        return self.images[idx], self.labels[idx]

    def has(self, name: str) -> bool:
        return len(self.splits.get(name, ())) > 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class _Raw:
    """Decoded source data before splitting: images (N, C, H, W) uint8 and integer labels."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    fixed_splits: dict[str, np.ndarray] = field(default_factory=dict)  # splits the source defines itself
    skipped: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "champion"


def prepare(cfg: DataConfig, seed: int, progress: Progress | None = None) -> Dataset:
    """Return the cache entry for `cfg`, building it first when it is missing.

    Raises:
        DataError: the source is missing, empty, or holds unreadable images.
    """
    cache_dir = cache_root(cfg)
    local = _local_source(cfg, cache_dir, progress)
    source = _Source.resolve(local)
    hashes = _HashIndex(cache_dir / ".file-hashes.json")
    # Remote and named sources are recorded as the user named them, not as their cache folder.
    described = source.describe() if local == cfg.source else cfg.source
    settings = {
        "format": FORMAT_VERSION,
        "source_digest": source.content_digest(progress, hashes),
        "image_size": list(cfg.image_size),
        "channels": cfg.channels,
        "validation_split": cfg.validation_split,
        "test_split": cfg.test_split,
        "on_error": cfg.on_error,
        "max_skipped_fraction": cfg.max_skipped_fraction,
        "max_image_pixels": cfg.max_image_pixels,
        "resize": cfg.resize,
        "seed": seed,
    }
    hashes.save()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    entry = cache_dir / digest
    if not (entry / "manifest.json").is_file():
        raw = source.load(cfg, progress)
        splits = _split(raw, cfg, seed)
        _write_entry(entry, raw, splits, settings, described)
    data = load_entry(entry, cfg.memory_budget_mb)
    data.source = described  # the same content may be reached under another name than the entry's first
    return data


DOWNLOADABLE = ("mnist", "fashion_mnist", "imagenette")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _local_source(cfg: DataConfig, cache_dir: Path, progress: Progress | None) -> str:
    """Bring a remote source to local disk (downloads and S3 syncs skip what is already there)."""
    if cfg.source in DOWNLOADABLE:
        from champion.download import fetch

        return str(fetch(cfg.source, cache_dir / "downloads", cfg.mirror, progress, checksums=cfg.checksums))
    if cfg.source.startswith("s3://"):
        from champion.remote import sync

        bucket_and_prefix = cfg.source.removeprefix("s3://").strip("/")
        dest = cache_dir / "s3" / bucket_and_prefix
        sync(cfg.source, dest, endpoint_url=cfg.s3.endpoint_url, progress=progress)
        return str(dest)
    return cfg.source


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def list_entries(root: Path) -> list[dict]:
    """Manifests of the complete entries under `root`, newest first."""
    manifests = [p for p in root.glob("*/manifest.json") if not p.parent.name.startswith(".")]
    return [json.loads(p.read_text()) | {"path": str(p.parent)} for p in sorted(manifests, key=lambda p: -p.stat().st_mtime)]


def clear(root: Path, digest: str | None = None) -> list[str]:
    """Remove one entry (or all, with the downloads and leftover temporary folders); returns what went."""
    if digest is not None:
        entry = root / digest
        if not (entry / "manifest.json").is_file():
            raise DataError(f"no cache entry {digest!r} under {root}; `champion data inspect` lists them")
        targets = [entry]
    else:
        targets = list(root.iterdir()) if root.is_dir() else []
    for target in targets:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return [t.name for t in targets]


def load_entry(entry: Path, memory_budget_mb: float = float("inf")) -> Dataset:
    """Read a cache entry; images larger than the memory budget are memory-mapped, not loaded."""
    manifest = json.loads((entry / "manifest.json").read_text())
    images_path = entry / "images.npy"
    mmap = "r" if images_path.stat().st_size > memory_budget_mb * 1e6 else None
    with np.load(entry / "splits.npz") as z:
        splits = {name: z[name] for name in SPLITS}
    return Dataset(
        digest=manifest["digest"],
        source=manifest["source"],
        path=entry,
        images=np.load(images_path, mmap_mode=mmap),
        labels=np.load(entry / "labels.npy"),
        classes=manifest["classes"],
        splits=splits,
        manifest=manifest,
    )


def _write_entry(entry: Path, raw: _Raw, splits: dict[str, np.ndarray], settings: dict, source: str) -> None:
    """Write into a private temporary folder, then rename: readers never see a partial entry."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        np.save(tmp / "images.npy", np.ascontiguousarray(raw.images))
        np.save(tmp / "labels.npy", raw.labels.astype(np.int64))
        np.savez(tmp / "splits.npz", **splits)
        manifest = {
            "digest": entry.name,
            "source": source,
            "classes": raw.classes,
            "label_map": {name: i for i, name in enumerate(raw.classes)},
            "image_shape": list(raw.images.shape[1:]),
            "counts": {name: int(len(idx)) for name, idx in splits.items()},
            "class_counts": {
                name: np.bincount(raw.labels[idx], minlength=len(raw.classes)).tolist() for name, idx in splits.items()
            },
            "settings": settings,
            "skipped": raw.skipped,
            "files": raw.files,
        }
        # The manifest is written last: it is what marks the folder's content as complete.
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _fsync(tmp)  # the data reaches the disk before the rename can: no whole-looking torn entry after a crash
        try:
            os.rename(tmp, entry)
        except OSError:
            # Another process finished the same entry first; its content is identical by construction.
            if not (entry / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split(raw: _Raw, cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """Stratified, seeded split of whatever the source did not split itself."""
    from sklearn.model_selection import train_test_split

    fixed = raw.fixed_splits
    pool = fixed.get("train", np.arange(len(raw.labels)))
    splits = {"test": fixed.get("test", np.array([], dtype=np.int64))}

    def carve(indices: np.ndarray, fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            keep, held = train_test_split(
                indices, test_size=fraction, stratify=raw.labels[indices], random_state=seed
            )
        except ValueError as exc:
            counts = np.bincount(raw.labels[indices], minlength=len(raw.classes))
            small = [raw.classes[i] for i, n in enumerate(counts) if n < 2]
            raise DataError(
                f"cannot make a stratified {what} split: {exc}. Classes with fewer than 2 images: {small or 'none'}; "
                f"add images or lower data.{what}_split"
            ) from None
        return np.sort(keep), np.sort(held)

    if "test" not in fixed and cfg.test_split > 0:
        pool, splits["test"] = carve(pool, cfg.test_split, "test")
    if "val" in fixed:
        splits["val"] = fixed["val"]
    else:
        pool, splits["val"] = carve(pool, cfg.validation_split, "validation")
    splits["train"] = pool
    return {name: splits[name].astype(np.int64) for name in SPLITS}


# --- sources -------------------------------------------------------------------------------------


class _Source:
    """A data source: knows its content digest and how to decode itself."""

    @staticmethod
    def resolve(spec: str) -> "_Source":
        if spec == "digits":
            return _Digits()
        path = Path(spec).expanduser()
        if "://" in spec:
            raise DataError(f"data.source {spec!r}: only s3:// URLs are supported as remote sources")
        if not path.exists():
            raise DataError(
                f"data.source {spec!r}: no such folder. Give digits, {', '.join(DOWNLOADABLE)}, s3://bucket/prefix, "
                "or a folder of class sub-folders or MNIST IDX files"
            )
        if not path.is_dir():
            raise DataError(f"data.source {spec!r} is a file; give the folder that holds the images")
        if _find_idx(path, "train_images"):
            return _IdxFolder(path)
        return _ImageFolder(path)

    def content_digest(self, progress: Progress | None, hashes: "_HashIndex") -> str:
        raise NotImplementedError

    def load(self, cfg: DataConfig, progress: Progress | None) -> _Raw:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class _Digits(_Source):
    """scikit-learn's 8x8 handwritten digits (1797 images), shipped with the package: works offline."""

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Pixel values are 0..16; scale to the full uint8 range like any other greyscale image.
        images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
        return images, bunch.target.astype(np.int64)

    def content_digest(self, progress: Progress | None, hashes: "_HashIndex") -> str:
        images, labels = self._arrays()
        return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()

    def load(self, cfg: DataConfig, progress: Progress | None) -> _Raw:
        images, labels = self._arrays()
        return _Raw(_fit(images, cfg), labels, [str(i) for i in range(10)])

    def describe(self) -> str:
        return "digits"


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


class _IdxFolder(_Source):
    """A folder with the four MNIST-format IDX files (gzipped or not); t10k becomes the test split."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths = {}
        for key in IDX_NAMES:
            p = _find_idx(folder, key)
            if p is None:
                raise DataError(f"{folder} has {IDX_NAMES['train_images']} but not {IDX_NAMES[key]}[.gz]; all four IDX files are needed")
            self.paths[key] = p

    def content_digest(self, progress: Progress | None, hashes: "_HashIndex") -> str:
        h = hashlib.sha256()
        for key in sorted(self.paths):
            h.update(hashes.digest(self.paths[key]).encode())
        return h.hexdigest()

    def load(self, cfg: DataConfig, progress: Progress | None) -> _Raw:
        arrays = {key: _read_idx(p) for key, p in self.paths.items()}
        for part in ("train", "test"):
            if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
                raise DataError(f"{self.folder}: {part} images and labels differ in count")
        n_train = len(arrays["train_labels"])
        images = _fit(np.concatenate([arrays["train_images"], arrays["test_images"]]), cfg)
        labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
        classes = [str(i) for i in range(int(labels.max()) + 1)]
        if self.folder.name == "fashion_mnist" and len(classes) == len(FASHION_CLASSES):
            classes = list(FASHION_CLASSES)  # the downloaded Fashion-MNIST: its published class names
        fixed = {"train": np.arange(n_train), "test": np.arange(n_train, len(labels))}
        files = {p.name: _file_digest(p) for p in self.paths.values()}
        return _Raw(images, labels, classes, fixed_splits=fixed, files=files)

    def describe(self) -> str:
        return str(self.folder.resolve())


class _ImageFolder(_Source):
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
                ) if class_dir.is_dir() else []
                if split == "train" and not files:
                    empty.append(str(class_dir))
                self.items.extend((split, p, label) for p in files)
        if empty:
            raise DataError("class folders with no images: " + ", ".join(empty) + f" (image files end in {', '.join(sorted(IMAGE_SUFFIXES))})")
        extra = {d.name for root in self.parts.values() for d in root.iterdir() if d.is_dir()} - set(self.classes)
        if extra - set(SPLITS):
            raise DataError(f"{folder}: classes {sorted(extra - set(SPLITS))} appear in val/ or test/ but not in train/")
        self._digests: dict[str, str] | None = None

    def content_digest(self, progress: Progress | None, hashes: "_HashIndex") -> str:
        paths = [p for _, p, _ in self.items]
        digests = _map(hashes.digest, paths, "hashing images", progress)
        self._digests = {str(p.relative_to(self.folder)): d for p, d in zip(paths, digests)}
        h = hashlib.sha256()
        for (split, p, label), d in zip(self.items, digests):
            h.update(f"{split}\0{p.relative_to(self.folder)}\0{label}\0{d}\n".encode())
        return h.hexdigest()

    def load(self, cfg: DataConfig, progress: Progress | None) -> _Raw:
        import warnings

        from PIL import Image

        # Pillow's own guard, at our limit: it refuses outright past twice the limit; _decode reports
        # anything past the limit itself, so Pillow's warning in between is redundant.
        Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        decoded = _map(lambda p: _decode(p, cfg), [p for _, p, _ in self.items], "decoding images", progress)
        bad = [f"{p} ({err})" for (_, p, _), (img, err) in zip(self.items, decoded) if img is None]
        if bad and cfg.on_error == "fail":
            raise DataError(
                f"{len(bad)} unreadable image(s):\n  " + "\n  ".join(bad) + "\nFix or remove them, or set data.on_error=skip"
            )
        if len(bad) > cfg.max_skipped_fraction * len(self.items):
            raise DataError(
                f"{len(bad)} of {len(self.items)} images are unreadable, more than data.max_skipped_fraction="
                f"{cfg.max_skipped_fraction}; the source looks broken. First ones:\n  " + "\n  ".join(bad[:20])
            )
        keep = [i for i, (img, _) in enumerate(decoded) if img is not None]
        if not keep:
            raise DataError(f"no readable images under {self.folder}")
        images = np.stack([decoded[i][0] for i in keep])
        labels = np.array([self.items[i][2] for i in keep], dtype=np.int64)
        split_of = np.array([self.items[i][0] for i in keep])
        fixed = {s: np.flatnonzero(split_of == s) for s in self.parts}
        return _Raw(images, labels, self.classes, fixed_splits=fixed, skipped=bad, files=self._digests or {})

    def describe(self) -> str:
        return str(self.folder.resolve())


def _decode(path: Path, cfg: DataConfig) -> tuple[np.ndarray | None, str]:
    """Decode, orient, convert and resize one image; (None, reason) when it cannot be read.

    Any mode comes in (RGB, L, P, RGBA, LA, CMYK, 16-bit); EXIF orientation is applied. Resizing
    follows `data.resize`: `shorter_side` scales the shorter side to fit and centre-crops, like
    torchvision's Resize + CenterCrop; `stretch` resizes to the exact size, ignoring aspect ratio.
    """
    from PIL import Image, ImageOps

    h, w = cfg.image_size
    try:
        with Image.open(path) as im:
            if im.width * im.height > cfg.max_image_pixels:
                return None, f"{im.width}x{im.height} pixels is more than data.max_image_pixels={cfg.max_image_pixels}"
            if im.format == "JPEG":
                # Decode at a reduced DCT scale when the image is much larger than needed: several
                # times faster, and the result is still at least the requested size.
                need = _fitted_size(im.size, (w, h), cfg.resize)
                im.draft("L" if cfg.channels == 1 else "RGB", need)
            im = ImageOps.exif_transpose(im)
            im = _to_mode(im, "L" if cfg.channels == 1 else "RGB")
            size = _fitted_size(im.size, (w, h), cfg.resize)
            im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
            left, top = (size[0] - w) // 2, (size[1] - h) // 2
            arr = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        return None, f"{exc}: more than data.max_image_pixels={cfg.max_image_pixels}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure makes this one file unreadable, reported by name
        return None, f"{type(exc).__name__}: {exc}"
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), ""


def _fitted_size(size: tuple[int, int], target: tuple[int, int], policy: str) -> tuple[int, int]:
    """(width, height) to resize to before the centre crop."""
    (width, height), (w, h) = size, target
    if policy == "stretch":
        return w, h
    scale = max(h / height, w / width)
    return max(w, round(width * scale)), max(h, round(height * scale))


def _to_mode(im, mode: str):
    """Convert to L or RGB; 16- and 32-bit greyscale are scaled down, not clipped at 255."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "P":
        im = im.convert("RGBA")  # a palette with transparency converts cleanly only through RGBA
    return im.convert(mode)


def _fit(images: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Bring an (N, C, H, W) uint8 array to the configured channels and size, all at once."""
    if images.shape[1] != cfg.channels:
        images = np.repeat(images, cfg.channels, axis=1) if images.shape[1] == 1 else images.mean(1, keepdims=True).astype(np.uint8)
    if tuple(images.shape[2:]) != tuple(cfg.image_size):
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(images).float()
        t = F.interpolate(t, size=tuple(cfg.image_size), mode="bilinear", antialias=True, align_corners=False)
        images = t.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return images


class _HashIndex:
    """sha256 of files, remembered by (absolute path, size, mtime_ns) in `<cache_dir>/.file-hashes.json`.

    A cache hit then costs a stat per file instead of reading every byte (seconds for Imagenette).
    Like rsync and git, an edit that keeps both size and modification time goes unnoticed;
    `champion data clear` forgets the index.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.changed = False
        try:
            self.entries: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}  # missing or unreadable: every file is hashed afresh

    def digest(self, file: Path) -> str:
        st = file.stat()
        key = str(file.resolve())
        known = self.entries.get(key)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            return known[2]
        digest = _file_digest(file)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".tmp-hashes-{os.getpid()}")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)  # concurrent writers: the last complete index wins, none is torn


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _map(fn, items: list, what: str, progress: Progress | None) -> list:
    """Thread-parallel map (decoders and hashing release the GIL), reporting progress."""
    out = []
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        for i, result in enumerate(pool.map(fn, items), 1):
            out.append(result)
            if progress and (i % 256 == 0 or i == len(items)):
                progress(what, i, len(items))
    return out
