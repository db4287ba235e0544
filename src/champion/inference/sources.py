"""What `champion predict` and `champion evaluate` read: one image file, a folder (recursive), a text
file listing paths, or every image under an `s3://bucket/prefix`. Listed lazily and in a stable
order (sorted names), so a folder of 100,000 images is never held as a list of decoded anything.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from champion.errors import ConfigError
from champion.ingest.decode import IMAGE_SUFFIXES

LIST_SUFFIXES = frozenset({".txt", ".lst"})  # a file of paths, one per line


@dataclass(frozen=True)
class Image:
    """One image to read: `name` is how rows name it, `rel` its path under the source (class folders
    label it), `open` gives what `champion.ingest.decode` reads (a path, or the bytes fetched)."""

    name: str
    rel: str
    open: Callable[[], str | BinaryIO]


def images(source: str) -> Iterator[Image]:
    """The images of SOURCE, in order.

    Raises:
        ConfigError: SOURCE does not exist, or is a folder or prefix holding no images.
    """
    if source.startswith("s3://"):
        yield from _s3(source)
        return
    path = Path(source).expanduser()
    if path.is_dir():
        found = False
        for image in _folder(path):
            found = True
            yield image
        if not found:
            raise ConfigError(f"{source} holds no image files (image files end in {', '.join(sorted(IMAGE_SUFFIXES))})")
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        yield from _listed(path)
    elif path.is_file():
        yield Image(str(path), path.name, lambda p=str(path): p)  # any suffix: decoding says whether it is an image
    else:
        raise ConfigError(f"{source} does not exist: give an image file, a folder of images, a .txt list of paths, or s3://bucket/prefix")


def _folder(root: Path) -> Iterator[Image]:
    """Image files under `root`, hidden ones skipped, in sorted order, walked lazily."""
    for folder, dirs, files in os.walk(root):  # symlinked folders are not followed: a link loop would never end
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = os.path.join(folder, name)
            yield Image(path, os.path.relpath(path, root), lambda p=path: p)


def _listed(list_file: Path) -> Iterator[Image]:
    """The paths in a list file, one per line (blank lines and # comments skipped); relative paths are
    read from the list file's folder. A missing file is a row with its reason, not an error."""
    base = list_file.parent
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if entry.startswith("s3://"):
                yield from _s3(entry)
                continue
            path = Path(entry).expanduser()
            path = path if path.is_absolute() else base / path
            yield Image(entry, entry, lambda p=str(path): p)


def _s3(uri: str) -> Iterator[Image]:
    """Every image object under an S3 prefix (or the one object it names), fetched when decoded."""
    from champion.ingest import remote  # lazy: fsspec and s3fs load only for s3:// sources

    bucket, prefix = remote._parse(uri)
    endpoint = remote._endpoint(None)
    fs = remote._filesystem(endpoint)
    where = endpoint or "AWS S3"
    for obj in remote._list_objects(fs, uri, bucket, prefix, where):
        if Path(obj.rel).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        yield Image(f"s3://{obj.remote}", obj.rel, lambda key=obj.remote: io.BytesIO(fs.cat_file(key)))
