"""Ingestion into the content-addressed cache: sources, splits, bad input, atomic entries."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from champion import ingest
from champion.config import DataConfig
from champion.errors import ConfigError, DataError

from conftest import SHARED_MNIST, requires_shared_mnist


def cfg(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), **kw)


def make_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 30), mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            arr = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
            Image.fromarray(arr).convert(mode).save(root / name / f"img{i}.png")
    return root


def test_digits_entry_has_stratified_seeded_splits(tmp_path: Path) -> None:
    data = ingest.prepare(cfg(tmp_path, validation_split=0.2, test_split=0.1), seed=1)
    assert data.images.shape == (1797, 1, 28, 28) and data.images.dtype == np.uint8
    assert data.classes == [str(i) for i in range(10)]
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 180 and sizes["val"] == 324
    all_idx = np.concatenate(list(data.splits.values()))
    assert len(np.unique(all_idx)) == 1797  # disjoint and complete
    val_counts = np.bincount(data.labels[data.splits["val"]])
    assert val_counts.max() - val_counts.min() <= 2  # stratified: every class equally represented
    manifest = json.loads((data.path / "manifest.json").read_text())
    assert manifest["label_map"] == {str(i): i for i in range(10)} and manifest["digest"] == data.digest


def test_same_settings_reuse_the_entry_and_new_settings_make_a_new_one(tmp_path: Path) -> None:
    a = ingest.prepare(cfg(tmp_path), seed=1)
    mtime = (a.path / "images.npy").stat().st_mtime_ns
    b = ingest.prepare(cfg(tmp_path), seed=1)
    assert b.digest == a.digest and (b.path / "images.npy").stat().st_mtime_ns == mtime
    c = ingest.prepare(cfg(tmp_path), seed=2)
    d = ingest.prepare(cfg(tmp_path, image_size=(16, 16)), seed=1)
    assert len({a.digest, c.digest, d.digest}) == 3
    assert not np.array_equal(a.splits["val"], c.splits["val"])
    assert d.images.shape[2:] == (16, 16)


def test_image_folder_resizes_converts_and_labels_sorted(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", {"cat": 6, "ant": 6, "bee": 6}, mode="P")
    data = ingest.prepare(cfg(tmp_path, source=str(root), channels=3, image_size=(16, 16)), seed=0)
    assert data.classes == ["ant", "bee", "cat"]
    assert data.images.shape == (18, 3, 16, 16)
    assert len(data.manifest["files"]) == 18


def test_changed_image_gives_a_new_digest(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", {"a": 5, "b": 5})
    before = ingest.prepare(cfg(tmp_path, source=str(root)), seed=0).digest
    Image.new("RGB", (20, 30), "white").save(root / "a" / "img0.png")
    assert ingest.prepare(cfg(tmp_path, source=str(root)), seed=0).digest != before


def test_presplit_folder_keeps_its_splits(tmp_path: Path) -> None:
    root = tmp_path / "split"
    make_folder(root / "train", {"x": 6, "y": 6})
    make_folder(root / "val", {"x": 2, "y": 2})
    make_folder(root / "test", {"x": 3, "y": 1})
    data = ingest.prepare(cfg(tmp_path, source=str(root)), seed=0)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 12, "val": 4, "test": 4}


def test_corrupt_images_are_listed_and_nothing_is_cached(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", {"a": 5, "b": 5})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "b" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError) as err:
        ingest.prepare(cfg(tmp_path, source=str(root)), seed=0)
    assert "broken.png" in str(err.value) and "empty.jpg" in str(err.value) and "on_error=skip" in str(err.value)
    cache = tmp_path / "cache"
    leftovers = [p.name for p in cache.iterdir() if p.name not in (".file-hashes.json", ".champion")] if cache.exists() else []
    assert not leftovers  # no entry, no temporary folder: only the index of file hashes and the cache marker
    with pytest.raises(DataError, match="max_skipped_fraction"):  # 2 of 12 is more than the default 5%
        ingest.prepare(cfg(tmp_path, source=str(root), on_error="skip"), seed=0)
    data = ingest.prepare(cfg(tmp_path, source=str(root), on_error="skip", max_skipped_fraction=0.2), seed=0)
    assert len(data.labels) == 10 and len(data.manifest["skipped"]) == 2


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "no class sub-folders"),
        ({"a": 3, "b": 0}, "no images"),
    ],
)
def test_bad_folders_name_the_problem(tmp_path: Path, layout: dict[str, int], message: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for name, count in layout.items():
        (root / name).mkdir()
        make_folder(root, {name: count}) if count else None
    with pytest.raises(DataError, match=message):
        ingest.prepare(cfg(tmp_path, source=str(root)), seed=0)


def test_missing_source_names_the_path(tmp_path: Path) -> None:
    # A data.source that names nothing is a configuration error (exit 2), not unreadable data.
    with pytest.raises(ConfigError, match="no such folder"):
        ingest.prepare(cfg(tmp_path, source=str(tmp_path / "nowhere")), seed=0)


def test_a_missing_source_exits_2(workdir: Path, cli) -> None:
    result = cli("data", "prepare", "--quiet", "--set", f"data.source={workdir / 'nowhere'}")
    assert result.exit_code == 2 and "no such folder" in result.stderr, result.stderr


def write_idx(folder: Path, n_train: int = 40, n_test: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
    return folder


def test_idx_folder_test_split_is_t10k(tmp_path: Path) -> None:
    data = ingest.prepare(cfg(tmp_path, source=str(write_idx(tmp_path / "idx")), validation_split=0.25), seed=0)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 30, "val": 10, "test": 20}
    assert (data.splits["test"] >= 40).all()


def test_truncated_idx_file_is_a_clear_error(tmp_path: Path) -> None:
    folder = write_idx(tmp_path / "idx")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable MNIST IDX file"):
        ingest.prepare(cfg(tmp_path, source=str(folder)), seed=0)


@requires_shared_mnist()
def test_shared_mnist_canonical_counts(tmp_path: Path) -> None:
    data = ingest.prepare(cfg(tmp_path, source=str(SHARED_MNIST), validation_split=0.1), seed=0)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 54000, "val": 6000, "test": 10000}
    assert np.bincount(data.labels[data.splits["test"]]).tolist()[:2] == [980, 1135]
