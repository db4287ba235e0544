"""Images as they come: formats, modes, EXIF orientation, resize policy, and odd or hostile files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from champion import ingest
from champion.config import DataConfig
from champion.errors import DataError


def cfg(tmp_path: Path, root: Path, **kw) -> DataConfig:
    return DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"), **kw)


def gradient(w: int, h: int) -> np.ndarray:
    """An RGB image whose left half is dark and right half bright: orientation is visible."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    return np.broadcast_to(x, (h, w, 3)).astype(np.uint8).copy()


KINDS = {  # file name -> how to write it
    "rgb.jpg": lambda p: Image.fromarray(gradient(40, 30)).save(p, quality=95),
    "grey.png": lambda p: Image.fromarray(gradient(40, 30)).convert("L").save(p),
    "palette.png": lambda p: Image.fromarray(gradient(40, 30)).convert("P").save(p, transparency=0),
    "rgba.png": lambda p: Image.fromarray(gradient(40, 30)).convert("RGBA").save(p),
    "cmyk.jpg": lambda p: Image.fromarray(gradient(40, 30)).convert("CMYK").save(p, quality=95),
    "bitmap.bmp": lambda p: Image.fromarray(gradient(40, 30)).save(p),
    "web.webp": lambda p: Image.fromarray(gradient(40, 30)).save(p, quality=95),
    "sixteen.png": lambda p: Image.fromarray(gradient(40, 30)[..., 0].astype(np.uint16) * 257).save(p),
}


@pytest.mark.parametrize("channels", [1, 3])
def test_every_format_and_mode_decodes_to_the_same_picture(tmp_path: Path, channels: int) -> None:
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for name, write in KINDS.items():
            write(root / cls / name)
    data = ingest.prepare(cfg(tmp_path, root, channels=channels, image_size=(16, 16), validation_split=0.25), seed=0)
    assert data.images.shape == (2 * len(KINDS), channels, 16, 16)
    # Every kind shows the same dark-to-bright gradient: no clipped 16-bit, no black palette, no lost CMYK.
    left, right = data.images[..., :4].mean(axis=(1, 2, 3)), data.images[..., -4:].mean(axis=(1, 2, 3))
    assert (right - left > 120).all(), (left, right)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            im = Image.fromarray(gradient(40, 40))
            exif = Image.Exif()
            exif[0x0112] = 3  # rotated 180 degrees: the bright side must end up on the left
            im.save(root / cls / f"{i}.jpg", exif=exif, quality=95)
    data = ingest.prepare(cfg(tmp_path, root, channels=1, image_size=(16, 16), validation_split=0.5), seed=0)
    assert (data.images[..., :4].mean() - data.images[..., -4:].mean()) > 120


def test_resize_policies(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            wide = np.zeros((20, 60), np.uint8)
            wide[:, :10] = 255  # a white bar at the far left: the centre crop cuts it away, stretch keeps it
            Image.fromarray(wide).save(root / cls / f"{i}.png")
    crop = ingest.prepare(cfg(tmp_path, root, channels=1, image_size=(20, 20), validation_split=0.5), seed=0)
    stretch = ingest.prepare(cfg(tmp_path, root, channels=1, image_size=(20, 20), validation_split=0.5, resize="stretch"), seed=0)
    assert crop.digest != stretch.digest
    assert crop.images[..., :3].max() == 0 and stretch.images[..., :2].min() > 200


def test_odd_and_hostile_files(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(gradient(20, 20)).save(root / cls / f"{i}.png")
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "text.jpg").write_text("not an image at all")
    Image.new("L", (3000, 3000)).save(root / "b" / "bomb.png")  # tiny file, 9 Mpx
    Image.new("L", (900_000, 1)).save(root / "b" / "strip.png")  # a few KB: resized first, 14 Gpx before the crop
    (root / "b" / ".hidden.png").write_bytes(b"junk")  # hidden: never read
    (root / "b" / "notes.txt").write_text("not an image suffix: ignored")
    with pytest.raises(DataError) as err:
        ingest.prepare(cfg(tmp_path, root, image_size=(16, 16), max_image_pixels=1_000_000), seed=0)
    msg = str(err.value)
    for name in ("zero.png", "truncated.png", "text.jpg", "bomb.png", "strip.png"):
        assert name in msg, name
    assert ".hidden.png" not in msg and "notes.txt" not in msg and "5 unreadable" in msg
    assert "max_image_pixels" in msg and "aspect ratio" in msg

    data = ingest.prepare(
        cfg(tmp_path, root, image_size=(16, 16), max_image_pixels=1_000_000, on_error="skip", max_skipped_fraction=0.2), seed=0
    )
    assert len(data.labels) == 40 and len(data.manifest["skipped"]) == 5
