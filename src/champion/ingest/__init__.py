"""Ingest: turn a data source into a content-addressed cache entry of uint8 arrays with a manifest.

The stage's one entry point is `prepare`. The parts it puts together live beside it: `sources`
(what a source holds and how to decode it), `decode` (one image file, numpy and Pillow only),
`splits` (stratified, seeded splits from labels alone) and `cache` (entries, the hash index,
clearing). The digest covers the source content and every setting that changes the arrays, so a
changed image or setting gives a new entry and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from champion.ingest import splits as splitting
from champion.ingest.cache import HASH_INDEX, Dataset, HashIndex, claim_root, clear, default_cache_dir, list_entries, load_entry, write_entry
from champion.config import DataConfig
from champion.errors import ConfigError
from champion.ingest.download import fetch
from champion.ingest.remote import sync
from champion.ingest.sources import Source, file_digest, resolve
from champion.ingest.splits import SPLITS
from champion.types import Progress

__all__ = ["DOWNLOADABLE", "Dataset", "Progress", "cache_root", "clear", "default_cache_dir", "list_entries", "load_entry", "prepare"]

FORMAT_VERSION = 1
DOWNLOADABLE = ("mnist", "fashion_mnist", "imagenette")


def prepare(cfg: DataConfig, seed: int, progress: Progress | None = None, splits: tuple[str, ...] = SPLITS) -> Dataset:
    """Return the cache entry for `cfg`, building it first when it is missing.

    Args:
        cfg: The data section of the config.
        seed: Seed of the splits.
        progress: Called as (description, done, total) while syncing, hashing and decoding.
        splits: The splits to return. Asking for fewer than all (a gate needs only `("val",)`) reads
            only their rows from the cache; on a cache miss only their images are decoded and no
            entry is written. The digest and the split are those a full `prepare` gives.

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
    hashes = HashIndex(cache_dir / HASH_INDEX, file_digest)
    # Remote and named sources are recorded as the user named them, not as their cache folder.
    described = source.describe() if local == cfg.source else cfg.source
    settings = _settings(cfg, seed, source.content_digest(progress, hashes.digest))
    hashes.save()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    entry = cache_dir / digest
    if (entry / "manifest.json").is_file():
        data = load_entry(entry, cfg.memory_budget_mb, wanted)
    else:
        data = _build(source, cfg, seed, entry, settings, described, wanted, progress)
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
    wanted: tuple[str, ...], progress: Progress | None,
) -> Dataset:  # fmt: skip
    """Split from labels, decode the rows needed, and write the entry when all of it was decoded."""
    plan = source.plan()
    split = splitting.split(plan.labels, plan.classes, plan.fixed, cfg.validation_split, cfg.test_split, seed)
    full = wanted == SPLITS
    rows = np.arange(len(plan.labels)) if full else np.unique(np.concatenate([split[s] for s in wanted]))
    decoded = source.decode(cfg, rows, progress)
    labels = plan.labels[decoded.kept]
    split = splitting.subset(split, decoded.kept)  # unreadable (skipped) files drop out of their split
    manifest = {
        "digest": entry.name,
        "source": described,
        "classes": plan.classes,
        "label_map": {name: i for i, name in enumerate(plan.classes)},
        "image_shape": list(decoded.images.shape[1:]),
        "counts": {name: int(len(idx)) for name, idx in split.items()},
        "class_counts": {name: np.bincount(labels[idx], minlength=len(plan.classes)).tolist() for name, idx in split.items()},
        "settings": settings,
        "skipped": decoded.skipped,
        "files": source.files,
    }
    if not full:
        # Only part of the data was decoded: it is returned, never written as an entry.
        return Dataset(entry.name, described, entry, decoded.images, labels, plan.classes, split, manifest | {"partial": list(wanted)})
    write_entry(entry, decoded.images, labels, split, manifest)
    return load_entry(entry, cfg.memory_budget_mb)


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
