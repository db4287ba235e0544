"""prepare(..., splits=("val",)): what a gate needs, without decoding or writing the whole data set."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from champion import ingest
from champion.config import DataConfig
from champion.ingest.sources import ImageFolder


def make_folder(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cow"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def make_idx(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for prefix, n in (("train", 60), ("t10k", 12)):
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 255, (n, 28, 28), dtype=np.uint8).tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + (np.arange(n) % 3).astype(np.uint8).tobytes())
    return folder


def assert_same_val(full: ingest.Dataset, val: ingest.Dataset) -> None:
    assert val.digest == full.digest and val.classes == full.classes
    for got, want in zip(val.split("val"), full.split("val")):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert len(val.images) == len(full.splits["val"])  # only the validation rows are held
    assert not val.has("train") and not val.has("test") and val.manifest["partial"] == ["val"]


@pytest.mark.parametrize("kind", ["digits", "folder", "idx"])
def test_val_only_on_a_miss_matches_a_full_prepare_and_writes_nothing(tmp_path: Path, kind: str) -> None:
    source = {"digits": "digits", "folder": str(make_folder(tmp_path / "imgs")), "idx": str(make_idx(tmp_path / "idx"))}[kind]
    # digits (8x8) and idx (28x28) are resized as arrays: the rows resized alone must match the whole resized
    settings = dict(source=source, image_size=(20, 20), validation_split=0.25, test_split=0.1 if kind != "idx" else 0.0)
    full = ingest.prepare(DataConfig(cache_dir=str(tmp_path / "a"), **settings), seed=3)

    val = ingest.prepare(DataConfig(cache_dir=str(tmp_path / "b"), **settings), seed=3, splits=("val",))

    assert_same_val(full, val)
    assert not (tmp_path / "b" / val.digest).exists()  # no partial entry under a final name
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".tmp-")]


def test_val_only_on_a_hit_reads_the_entry(tmp_path: Path) -> None:
    cfg = DataConfig(source=str(make_folder(tmp_path / "imgs")), cache_dir=str(tmp_path / "cache"), validation_split=0.25)
    full = ingest.prepare(cfg, seed=0)
    val = ingest.prepare(cfg, seed=0, splits=("val",))
    assert_same_val(full, val)
    assert val.path == full.path


def test_val_only_never_decodes_the_training_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    cfg = DataConfig(source=str(root), cache_dir=str(tmp_path / "a"), validation_split=0.25)
    full = ingest.prepare(cfg, seed=0)
    names = ImageFolder(root).names
    for i in full.splits["train"]:
        (root / names[i]).write_bytes(b"not an image any more")  # decoding any of these would fail

    val = ingest.prepare(cfg.model_copy(update={"cache_dir": str(tmp_path / "b")}), seed=0, splits=("val",))

    for got, want in zip(val.split("val"), full.split("val")):
        assert np.array_equal(got, want)


def test_skipped_files_drop_out_of_the_split_they_were_drawn_in(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", per_class=12)
    clean = ingest.prepare(DataConfig(source=str(root), cache_dir=str(tmp_path / "clean"), validation_split=0.25), seed=0)
    names = ImageFolder(root).names
    bad_train, bad_val = root / names[clean.splits["train"][0]], root / names[clean.splits["val"][0]]
    bad_train.write_bytes(b"broken")
    bad_val.write_bytes(b"broken")
    skip = dict(source=str(root), validation_split=0.25, on_error="skip", max_skipped_fraction=0.2)

    full = ingest.prepare(DataConfig(cache_dir=str(tmp_path / "a"), **skip), seed=0)
    val = ingest.prepare(DataConfig(cache_dir=str(tmp_path / "b"), **skip), seed=0, splits=("val",))

    assert {len(full.splits["train"]), len(full.splits["val"])} == {len(clean.splits["train"]) - 1, len(clean.splits["val"]) - 1}
    # Every other file stays in the split it was drawn in: the clean split minus the bad file.
    assert np.array_equal(full.split("val")[0], np.delete(clean.split("val")[0], 0, axis=0))
    assert_same_val(full, val)
    assert full.manifest["settings"]["split_over"] == "files" and "split_over" not in clean.manifest["settings"]
    assert [s.split(" (")[0] for s in full.manifest["skipped"]] == sorted([str(bad_train), str(bad_val)])


def test_unknown_split_is_a_config_error(tmp_path: Path) -> None:
    from champion.errors import ConfigError

    with pytest.raises(ConfigError, match="splits must name"):
        ingest.prepare(DataConfig(cache_dir=str(tmp_path)), seed=0, splits=("validation",))


def test_decoding_needs_no_torch(tmp_path: Path) -> None:
    """A serving process decodes with exactly this code and never imports torch."""
    shutil.copy(Path(__file__), tmp_path / "unused.py")  # a file that is not an image
    Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3).astype(np.uint8)).save(tmp_path / "x.png")
    code = (
        "import sys; from champion.ingest.decode import decode; "
        f"arr, err = decode({str(tmp_path / 'x.png')!r}, (16, 16), 3); assert arr.shape == (3, 16, 16) and not err, err; "
        f"bad, why = decode({str(tmp_path / 'unused.py')!r}, (16, 16), 3); assert bad is None and why; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
