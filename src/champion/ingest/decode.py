"""Decode one image file into a uint8 (C, H, W) array: the exact code training and serving share.

Only numpy and Pillow are used, so a serving process can import this without torch. Any mode comes
in (RGB, L, P, RGBA, LA, CMYK, 16- and 32-bit greyscale); EXIF orientation is applied. Resizing
follows the `resize` policy: `shorter_side` scales the shorter side to fit and centre-crops, like
torchvision's Resize + CenterCrop; `stretch` resizes to the exact size, ignoring aspect ratio.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default guard
# The resize before the centre crop may be at most this many times the output's pixels: an aspect
# ratio up to 64:1 against the output's. Past it (a 3,000,000 x 1 strip in a 3 KB PNG would be
# resized to gigapixels before the crop) the file is refused, so the work is bounded by the output.
MAX_RESIZE_FACTOR = 64


def set_pixel_limit(max_pixels: int) -> None:
    """Set Pillow's decompression-bomb guard to `max_pixels` (process-wide).

    Pillow refuses outright past twice its limit; `decode` reports anything past the limit itself,
    so Pillow's warning in between is redundant and silenced.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode(
    source: str | Path | BinaryIO,
    image_size: tuple[int, int],
    channels: int,
    resize: str = "shorter_side",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray | None, str]:
    """Decode, orient, convert and resize one image.

    Args:
        source: A path or an open binary file.
        image_size: (height, width) of the result.
        channels: 1 (greyscale) or 3 (RGB).
        resize: "shorter_side" (fit, then centre-crop) or "stretch".
        max_pixels: Images with more pixels are refused (decompression bombs).

    Returns:
        (array of shape (channels, height, width) uint8, "") or (None, the reason it cannot be read).
    """
    h, w = image_size
    try:
        with Image.open(source) as im:
            if im.width * im.height > max_pixels:
                return None, f"{im.width}x{im.height} pixels is more than data.max_image_pixels={max_pixels}"
            if im.format == "JPEG":
                # Decode at a reduced DCT scale when the image is much larger than needed: several
                # times faster, and the result is still at least the requested size.
                im.draft("L" if channels == 1 else "RGB", fitted_size(im.size, (w, h), resize))
            im = ImageOps.exif_transpose(im)
            im = _to_mode(im, "L" if channels == 1 else "RGB")
            size = fitted_size(im.size, (w, h), resize)
            if size[0] * size[1] > MAX_RESIZE_FACTOR * w * h:
                return None, f"{im.width}x{im.height} pixels is too far from the {w}x{h} output's shape (an aspect ratio over {MAX_RESIZE_FACTOR}:1)"
            im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
            left, top = (size[0] - w) // 2, (size[1] - h) // 2
            arr = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        return None, f"{exc}: more than data.max_image_pixels={max_pixels}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure makes this one file unreadable, reported by name
        return None, f"{type(exc).__name__}: {exc}"
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), ""


def fitted_size(size: tuple[int, int], target: tuple[int, int], policy: str) -> tuple[int, int]:
    """(width, height) to resize to before the centre crop."""
    (width, height), (w, h) = size, target
    if policy == "stretch":
        return w, h
    scale = max(h / height, w / width)
    return max(w, round(width * scale)), max(h, round(height * scale))


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert to L or RGB; 16- and 32-bit greyscale are scaled down, not clipped at 255."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "P":
        im = im.convert("RGBA")  # a palette with transparency converts cleanly only through RGBA
    return im.convert(mode)
