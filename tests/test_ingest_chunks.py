"""Ingestion in chunks: decoded images are streamed into the entry, and the entry is exactly the one
that decoding everything in memory at once gives (same images, labels, splits, digest)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from champion import ingest
from champion.config import DataConfig
from champion.ingest import cache, sources
from champion.ingest import splits as splitting
from champion.ingest.decode import decode


def cfg(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), **kw)


def jpeg_folder(root: Path, per_class: int = 20, broken: tuple[str, ...] = ()) -> Path:
    """JPEGs of assorted sizes and modes in three classes, plus the named unreadable files."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("ant", "bee", "cat")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(20, 90, size=2))
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            (img.convert("L") if i % 5 == 0 else img).save(root / name / f"{i:03d}.jpg", quality=85)
    for rel in broken:
        (root / rel).write_bytes(b"\xff\xd8 not a jpeg")
    return root


def all_in_memory(source: Path, c: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[str]]:
    """What ingestion built before chunks: every file decoded, the readable ones stacked at once."""
    src = sources.resolve(str(source), ())
    plan = src.plan()
    split = splitting.split(plan.labels, plan.classes, plan.fixed, c.validation_split, c.test_split, seed)
    paths = [src.folder / name for name in src.names]
    decoded = [decode(p, c.image_size, c.channels, c.resize, c.max_image_pixels) for p in paths]
    keep = np.array([i for i, (img, _) in enumerate(decoded) if img is not None])
    skipped = [f"{paths[i]} ({err})" for i, (img, err) in enumerate(decoded) if img is None]
    return np.stack([decoded[i][0] for i in keep]), plan.labels[keep], splitting.subset(split, keep), skipped


@pytest.mark.parametrize("pool", [False, True], ids=["in-process", "process-pool"])
def test_an_entry_built_in_chunks_equals_the_all_in_memory_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: bool) -> None:
    # Chunks of 7 rows, with unreadable files falling in different chunks (and one chunk's first row).
    root = jpeg_folder(tmp_path / "imgs", broken=("ant/007.jpg", "bee/000.jpg", "cat/019.jpg"))
    monkeypatch.setattr(sources, "CHUNK", 7)
    monkeypatch.setattr(sources, "workers", lambda: 2 if pool else 1)
    c = cfg(tmp_path, source=str(root), channels=3, image_size=(24, 24), on_error="skip", max_skipped_fraction=0.1)
    data = ingest.prepare(c, seed=3)
    images, labels, split, skipped = all_in_memory(root, c, seed=3)
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert {k: v.tolist() for k, v in data.splits.items()} == {k: v.tolist() for k, v in split.items()}
    assert data.manifest["skipped"] == skipped and len(skipped) == 3
    assert data.manifest["image_shape"] == [3, 24, 24] and sum(data.manifest["counts"].values()) == 57
    # The file is byte for byte what np.save of the whole array writes, so old readers read it.
    buf = io.BytesIO()
    np.save(buf, images)
    assert (data.path / "images.npy").read_bytes() == buf.getvalue()
    # One chunk for everything gives the same entry: chunking changes neither the digest nor the arrays.
    monkeypatch.setattr(sources, "CHUNK", 10_000)
    whole = ingest.prepare(cfg(tmp_path / "other", source=str(root), channels=3, image_size=(24, 24), on_error="skip", max_skipped_fraction=0.1), seed=3)
    assert whole.digest == data.digest
    assert (whole.path / "images.npy").read_bytes() == buf.getvalue()


def test_the_digest_of_a_source_is_what_it_was_before_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK", 100)
    data = ingest.prepare(cfg(tmp_path), seed=0)  # digits, 1797 images: 18 chunks
    assert data.digest == "fb39e6d39533ed26"  # pinned from the all-in-memory version: old entries stay valid
    assert json.loads((data.path / "manifest.json").read_text())["image_shape"] == [1, 28, 28]


def test_decoding_and_writing_never_hold_more_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory is bounded by construction: the decoder only ever sees CHUNK files, the writer only
    ever gets CHUNK rows, and no more than IN_FLIGHT chunks per worker are queued at once."""
    root = jpeg_folder(tmp_path / "imgs", per_class=10)
    monkeypatch.setattr(sources, "CHUNK", 4)
    monkeypatch.setattr(sources, "workers", lambda: 1)
    decoded, written = [], []
    real_decode, real_write = sources.decode_files, cache.NpyWriter.write
    monkeypatch.setattr(sources, "decode_files", lambda paths, **kw: decoded.append(len(paths)) or real_decode(paths, **kw))
    monkeypatch.setattr(cache.NpyWriter, "write", lambda self, rows: written.append(len(rows)) or real_write(self, rows))
    data = ingest.prepare(cfg(tmp_path, source=str(root), image_size=(16, 16), channels=3), seed=0)
    assert decoded == [4] * 7 + [2] and written == decoded and len(data.images) == 30


def test_a_pool_keeps_a_bounded_number_of_chunks_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "workers", lambda: 2)
    started, taken, reported = [], [], []
    chunks = [[i] * 3 for i in range(20)]

    def job(chunk: list[int]) -> list[int]:
        started.append(chunk[0])
        return chunk

    for result in sources.map_chunks(job, chunks, "x", lambda what, done, total: reported.append((done, total)), processes=False):
        # A chunk starts only once submitted, and no more than IN_FLIGHT per worker are submitted ahead.
        assert len(started) <= len(taken) + 1 + sources.IN_FLIGHT * 2
        taken.append(result)
    assert taken == chunks and reported == [(3 * k, 60) for k in range(1, 21)]


def test_the_npy_writer_rewrites_its_header_with_the_row_count(tmp_path: Path) -> None:
    rows = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    with cache.NpyWriter(tmp_path / "a.npy", (2, 3)) as out:
        out.write(rows[:2])
        out.write(rows[2:])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), rows)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy", mmap_mode="r"), rows)
    with cache.NpyWriter(tmp_path / "empty.npy", (2, 3)):
        pass
    assert np.load(tmp_path / "empty.npy").shape == (0, 2, 3)
    with pytest.raises(ValueError, match="expected"):
        cache.NpyWriter(tmp_path / "b.npy", (2, 3)).write(np.zeros((1, 3, 2), np.uint8))


def test_a_mapped_prepare_returns_a_memory_map_and_the_same_data(tmp_path: Path) -> None:
    loaded = ingest.prepare(cfg(tmp_path), seed=0)
    mapped = ingest.prepare(cfg(tmp_path), seed=0, mapped=True)
    assert isinstance(mapped.images, np.memmap) and not isinstance(loaded.images, np.memmap)
    np.testing.assert_array_equal(mapped.images, loaded.images)
    fresh = ingest.prepare(cfg(tmp_path / "fresh"), seed=0, mapped=True)  # a build, not a hit
    assert isinstance(fresh.images, np.memmap) and fresh.digest == loaded.digest


def test_files_are_hashed_from_the_bytes_decoded_and_the_index_remembers_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = jpeg_folder(tmp_path / "imgs", per_class=6)
    monkeypatch.setattr(sources, "workers", lambda: 1)
    hashed_apart, real_digest = [], sources.file_digest
    monkeypatch.setattr(ingest, "file_digest", lambda p: hashed_apart.append(p) or real_digest(p))
    c = cfg(tmp_path, source=str(root), image_size=(16, 16), channels=3)
    first = ingest.prepare(c, seed=0)
    index = json.loads((tmp_path / "cache" / cache.HASH_INDEX).read_text())
    assert len(index) == 18 and not hashed_apart  # every file read once: hashed and decoded from the same bytes
    assert first.manifest["files"] == {str(p.relative_to(root)): real_digest(p) for p in sorted(root.rglob("*.jpg"))}
    # Known files and another size: the ordinary path (the index answers, then decoding alone); same arrays.
    other = ingest.prepare(cfg(tmp_path, source=str(root), image_size=(24, 24), channels=3), seed=0)
    images, labels, split, _ = all_in_memory(root, cfg(tmp_path, source=str(root), image_size=(24, 24), channels=3), seed=0)
    np.testing.assert_array_equal(other.images, images)
    assert {k: v.tolist() for k, v in other.splits.items()} == {k: v.tolist() for k, v in split.items()}
    # The index lost while the entry stays: decoded again, then found to be the same entry; the work is dropped.
    (tmp_path / "cache" / cache.HASH_INDEX).unlink()
    mtime = (first.path / "images.npy").stat().st_mtime_ns
    again = ingest.prepare(c, seed=0)
    assert again.digest == first.digest and (again.path / "images.npy").stat().st_mtime_ns == mtime
    assert not [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")]


def test_a_file_changed_after_it_was_read_gives_the_entry_of_what_was_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash and pixels come from the same bytes; the next prepare sees the change."""
    root = jpeg_folder(tmp_path / "imgs", per_class=6)
    monkeypatch.setattr(sources, "workers", lambda: 1)
    real_decode = sources.decode_files
    changed = root / "ant" / "000.jpg"
    before = sources.file_digest(changed)

    def decode_then_change(paths, **kw):
        out = real_decode(paths, **kw)
        if changed in paths:
            Image.new("RGB", (40, 40), "white").save(changed)  # after it was read, before the digest is taken
        return out

    monkeypatch.setattr(sources, "decode_files", decode_then_change)
    c = cfg(tmp_path, source=str(root), image_size=(16, 16), channels=3)
    first = ingest.prepare(c, seed=0)
    row = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg")).index("ant/000.jpg")
    assert first.manifest["files"]["ant/000.jpg"] == before and not (first.images[row] == 255).all()
    monkeypatch.setattr(sources, "decode_files", real_decode)
    second = ingest.prepare(c, seed=0)
    assert second.digest != first.digest and (second.images[row] == 255).all()
    assert second.manifest["files"]["ant/000.jpg"] == sources.file_digest(changed)
