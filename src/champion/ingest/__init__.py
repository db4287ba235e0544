"""Ingest: turn a data source into a content-addressed cache entry of uint8 arrays with a manifest.

The stage's one entry point is `prepare`. The parts it puts together live beside it: `sources`
(what a source holds and how to decode it), `decode` (one image file, numpy and Pillow only),
`splits` (stratified, seeded splits from labels alone) and `cache` (entries, the hash index,
clearing). The digest covers the source content and every setting that changes the arrays, so a
changed image or setting gives a new entry and an unchanged one is reused. Images are decoded in
chunks (on a process per core for image files) and streamed into the entry's file as they come,
so building an entry takes memory for a few chunks, not for the data set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from champion.ingest import splits as splitting
from champion import files
from champion.ingest.cache import IMAGES, HASH_INDEX, Dataset, HashIndex, NpyWriter, claim_root, clear, default_cache_dir, list_entries, load_entry, write_rest
from champion.config import DataConfig
from champion.errors import ConfigError
from champion.ingest.download import fetch
from champion.ingest.remote import sync
from champion.ingest.sources import Decoded, Hashed, ImageFolder, Plan, Source, file_digest, resolve
from champion.ingest.splits import SPLITS
from champion.types import Progress

__all__ = ["DOWNLOADABLE", "Dataset", "Progress", "cache_root", "clear", "default_cache_dir", "list_entries", "load_entry", "prepare"]

FORMAT_VERSION = 1
DOWNLOADABLE = ("mnist", "fashion_mnist", "imagenette")


def prepare(
    cfg: DataConfig, seed: int, progress: Progress | None = None, splits: tuple[str, ...] = SPLITS, mapped: bool = False
) -> Dataset:
    """Return the cache entry for `cfg`, building it first when it is missing.

    Args:
        cfg: The data section of the config.
        seed: Seed of the splits.
        progress: Called as (description, done, total) while syncing, hashing and decoding.
        splits: The splits to return. Asking for fewer than all (a gate needs only `("val",)`) reads
            only their rows from the cache; on a cache miss only their images are decoded and no
            entry is written. The digest and the split are those a full `prepare` gives.
        mapped: Return a full entry's images memory-mapped whatever their size (for a caller that
            only wants the entry built, like `champion data prepare`: its memory then stays flat).

    Raises:
        ConfigError: `splits` names an unknown split, or the cache folder is not champion's.
        DataError: The source is missing, empty, or holds unreadable images.
    """
    wanted = tuple(s for s in SPLITS if s in splits)  # canonical order
    if not wanted or set(splits) - set(SPLITS):
        raise ConfigError(f"splits must name some of {SPLITS}, got {tuple(splits)}")
    cache_dir = claim_root(cache_root(cfg))
    local = _local_source(cfg, cache_dir, progress)
    source = resolve(local, DOWNLOADABLE)
    # An image folder's own files are held by position in the index, not by path again.
    hashes = HashIndex(cache_dir / HASH_INDEX, file_digest, *((source.folder, source.names) if isinstance(source, ImageFolder) else ()))
    # Remote and named sources are recorded as the user named them, not as their cache folder.
    described = source.describe() if local == cfg.source else cfg.source
    staged = None
    if isinstance(source, ImageFolder):
        source.digests = hashes.known_names()
        if source.digests is None and wanted == SPLITS:
            # Files the index does not know are new or changed, so the entry is almost surely missing:
            # decode everything now, hashing each file from the bytes read to decode it, rather than
            # read every file twice. Should the entry exist after all, the work is dropped.
            staged = _stage(source, cfg, seed, cache_dir, hashes, progress)
    try:
        settings = _settings(cfg, seed, source.content_digest(progress, hashes.digest))
        hashes.save()
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        entry = cache_dir / digest
        budget = 0.0 if mapped else cfg.memory_budget_mb
        if (entry / "manifest.json").is_file():
            data = load_entry(entry, budget, wanted)
        else:
            data = _build(source, cfg, seed, entry, settings, described, wanted, progress, budget, staged)
    finally:
        if staged is not None:
            staged.discard()  # gone already when it became the entry
    data.source = described  # the same content may be reached under another name than the entry's first
    return data


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def _settings(cfg: DataConfig, seed: int, source_digest: str) -> dict:
    """Everything that changes the arrays or the split: its hash is the entry's digest."""
    settings = {
        "format": FORMAT_VERSION,
        "source_digest": source_digest,
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
    if cfg.on_error == "skip":
        # Splits are drawn over every file, then unreadable ones drop out, so that one split can be
        # decoded alone. Entries from before split over the readable files only: a new digest keeps
        # them from being read as the same thing.
        settings["split_over"] = "files"
    return settings


def _build(
    source: Source, cfg: DataConfig, seed: int, entry: Path, settings: dict, described: str,
    wanted: tuple[str, ...], progress: Progress | None, budget: float, staged: _Staged | None = None,
) -> Dataset:  # fmt: skip
    """Split from labels, decode the rows needed, and write the entry when all of it was decoded.

    A full build streams the decoded chunks straight into the entry's images file in its temporary
    folder (or finishes the folder `staged` decoded); a partial one (some splits) gathers them in
    memory, for they are returned, not written.
    """
    plan = source.plan()
    shape = (cfg.channels, *cfg.image_size)

    def manifest(kept: np.ndarray, skipped: list[str], split: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        labels = plan.labels[kept]
        kept_split = splitting.subset(split, kept)  # unreadable (skipped) files drop out of their split
        return labels, kept_split, {
            "digest": entry.name,
            "source": described,
            "classes": plan.classes,
            "label_map": {name: i for i, name in enumerate(plan.classes)},
            "image_shape": list(shape),
            "counts": {name: int(len(idx)) for name, idx in kept_split.items()},
            "class_counts": {name: np.bincount(labels[idx], minlength=len(plan.classes)).tolist() for name, idx in kept_split.items()},
            "settings": settings,
            "skipped": skipped,
        }  # and "files", streamed by write_rest (or added below for a partial read)

    if wanted != SPLITS:
        # Only part of the data is decoded (the rows of the splits asked for): returned, never written as an entry.
        split = _split(plan, cfg, seed)
        rows = np.unique(np.concatenate([split[s] for s in wanted]))
        images = np.empty((len(rows), *shape), dtype=np.uint8)

        def put(chunk: np.ndarray, at: int) -> None:
            images[at : at + len(chunk)] = chunk

        kept, skipped = _gather(source.decode(cfg, rows, progress), put)
        labels, kept_split, meta = manifest(kept, skipped, split)
        meta |= {"files": dict(source.file_digests()), "partial": list(wanted)}
        return Dataset(entry.name, described, entry, images[: len(kept)], labels, plan.classes, kept_split, meta)
    what = f"data cache entry {entry.name}"
    if staged is not None:
        with _room(entry.parent, what):
            write_rest(staged.folder, *manifest(staged.kept, staged.skipped, staged.split), source.file_digests())
            files.publish_dir(staged.folder, entry)
    else:
        with files.staging_dir(entry, what=what) as tmp:
            kept, skipped, split = _decode_all(source, cfg, plan, seed, tmp, progress)
            write_rest(tmp, *manifest(kept, skipped, split), source.file_digests())
    return load_entry(entry, budget)


@dataclass
class _Staged:
    """Every image of a source decoded into a temporary folder of the cache before its digest is known."""

    folder: Path
    kept: np.ndarray
    skipped: list[str]
    split: dict[str, np.ndarray]

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _stage(source: ImageFolder, cfg: DataConfig, seed: int, cache_dir: Path, hashes: HashIndex, progress: Progress | None) -> _Staged:
    """Hash and decode every file of `source` in one read each, into a new `.tmp-*` folder of the
    cache (which `data clear` recognises); the hashes go into the index (chunk by chunk, even when
    decoding fails: the next try need not hash again) and into `source.digests`."""
    what = "a new data cache entry"
    with _room(cache_dir, what):
        # An entry's temporary name, 16 random hex digits in place of the digest; mkdir applies the
        # umask, so the entry gets the usual permissions.
        folder = cache_dir / f"{files.TMP_PREFIX}{secrets.token_hex(8)}-staged"
        folder.mkdir(0o777)
    digests = np.zeros((len(source.names), 32), dtype=np.uint8)

    def record(at: int, hashed: list[Hashed]) -> None:
        for i, (key, size, mtime_ns, digest) in enumerate(hashed, at):
            hashes.record(key, size, mtime_ns, digest, i)
            digests[i] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)

    try:
        with _room(cache_dir, what):
            kept, skipped, split = _decode_all(source, cfg, source.plan(), seed, folder, progress, record)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        hashes.save()  # unreadable files: the next try need not hash again
        raise
    source.digests = digests
    return _Staged(folder, kept, skipped, split)


def _decode_all(
    source: Source, cfg: DataConfig, plan: Plan, seed: int, folder: Path, progress: Progress | None,
    hashed: Callable[[int, list[Hashed]], None] | None = None,
) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:  # fmt: skip
    """Decode every row into `folder`/images.npy, chunk by chunk; return the rows kept, the files
    skipped and the split (drawn from labels alone, first: milliseconds). Given `hashed` (image
    folders only), each file is hashed from the bytes decoded and `hashed` called with each chunk's
    first row and its `Hashed` items.
    """
    split = _split(plan, cfg, seed)
    rows = np.arange(len(plan.labels))
    if hashed is None:
        chunks = source.decode(cfg, rows, progress)
    else:
        assert isinstance(source, ImageFolder)
        chunks = source.decode(cfg, rows, progress, hash_files=True)
    with NpyWriter(folder / IMAGES, (cfg.channels, *cfg.image_size)) as out:
        kept, skipped = _gather(chunks, lambda chunk, at: out.write(chunk), hashed)
    return kept, skipped, split


def _split(plan: Plan, cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    return splitting.split(plan.labels, plan.classes, plan.fixed, cfg.validation_split, cfg.test_split, seed)


def _gather(
    chunks: Iterator[Decoded], put: Callable[[np.ndarray, int], None], hashed: Callable[[int, list[Hashed]], None] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Hand each chunk's images to `put` (with the row they start at) as they come; return the item
    indices kept and the files skipped, and hand each chunk's file hashes to `hashed` with the item
    they start at."""
    kept, skipped, at, hashed_at = [], [], 0, 0
    for chunk in chunks:
        put(chunk.images, at)
        at += len(chunk.images)
        kept.append(chunk.kept)
        skipped += chunk.skipped
        if hashed is not None:
            hashed(hashed_at, chunk.hashed)
            hashed_at += len(chunk.hashed)
    return (np.concatenate(kept) if kept else np.array([], dtype=np.int64)), skipped


@contextlib.contextmanager
def _room(folder: Path, what: str) -> Iterator[None]:
    """A write into `folder` that found no room raises DiskFullError naming `folder` and `what`."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        error = files.no_room(exc, folder, what)
        if error is None or error is exc:
            raise
        raise error from exc


def _local_source(cfg: DataConfig, cache_dir: Path, progress: Progress | None) -> str:
    """Bring a remote source to local disk (downloads and S3 syncs skip what is already there)."""
    if cfg.source in DOWNLOADABLE:
        return str(fetch(cfg.source, cache_dir / "downloads", cfg.mirror, progress, checksums=cfg.checksums))
    if cfg.source.startswith("s3://"):
        bucket_and_prefix = cfg.source.removeprefix("s3://").strip("/")
        dest = cache_dir / "s3" / bucket_and_prefix
        sync(cfg.source, dest, endpoint_url=cfg.s3.endpoint_url, progress=progress)
        return str(dest)
    return cfg.source
