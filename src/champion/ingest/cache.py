"""The data cache: content-addressed entries, the file-hash index, and the rules for clearing it.

An entry is a folder `<root>/<digest>/` holding `images.npy` (N, C, H, W uint8), `labels.npy`
(N int64), `splits.npz` (train/val/test indices) and `manifest.json`. It is written into a
temporary folder and renamed into place when complete, so a folder under its final name is whole.
The images are streamed into their file chunk by chunk as they are decoded (`NpyWriter`), so
building an entry takes memory for a few chunks, not for the data set.

The root carries champion's marker (`champion.files.claim`, kind "data-cache"). A root written
before markers existed is adopted when it holds at least one entry with a valid manifest. Clearing
removes only what champion wrote and recognises: entries, `downloads/<dataset>/`, S3 mirrors (folders
with a `.champion-sync.json`), the hash index and `.tmp-*` leftovers; anything else stays.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import threading
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from champion import files
from champion.files import default_cache_dir  # noqa: F401 - re-exported: ingest's callers reach it here
from champion.errors import ConfigError, DataError
from champion.ingest.download import KNOWN
from champion.ingest.splits import SPLITS, subset

KIND = "data-cache"
HASH_INDEX = ".file-hashes.json"
IMAGES = "images.npy"
DOWNLOADS = "downloads"
S3 = "s3"
SYNC_STATE = ".champion-sync.json"  # written by champion.remote in every mirror folder
_MANIFEST_KEYS = {"digest", "source", "classes", "settings", "counts"}


@dataclass
class Dataset:
    """A prepared data set: uint8 images, labels, class names and split indices.

    `images` and `labels` hold the rows of the splits that were asked for (all of them unless
    `prepare(..., splits=...)` asked for fewer), and `splits` indexes into those rows; a split not
    asked for is empty. `path` is the cache entry's folder; after a partial read on a cache miss
    nothing was written there. `manifest` is the entry's manifest; a partial read adds
    "partial": the splits it holds.
    """

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


def claim_root(root: Path) -> Path:
    """Make `root` champion's cache folder: new or empty folders are marked, old caches adopted.

    Raises:
        ConfigError: `root` holds things that are not a champion cache.
    """
    return files.claim(root, KIND, adopt=_holds_entries)


def list_entries(root: Path) -> list[dict]:
    """Manifests of the complete entries under `root`, newest first."""
    manifests = [p for p in root.glob("*/manifest.json") if not p.parent.name.startswith(".")]
    return [json.loads(p.read_text()) | {"path": str(p.parent)} for p in sorted(manifests, key=lambda p: -p.stat().st_mtime)]


def clear(root: Path, digest: str | None = None, confirm: Callable[[list[str]], bool] | None = None) -> list[str]:
    """Remove one entry, or everything champion wrote in the cache; return what went (relative paths).

    Args:
        root: The cache folder.
        digest: The entry to remove; None removes every entry, the downloads, the S3 mirrors, the
            hash index and leftover temporary folders.
        confirm: Called with the list of what would go before anything goes; False removes nothing.

    Raises:
        ConfigError: `root` is `/`, the home folder (or above it), the working directory when it is
            not a marked cache, or a folder champion neither marked nor recognises as an old cache.
        DataError: `digest` names no entry.
    """
    root = Path(root).expanduser()
    _refuse_obvious(root)
    if not root.is_dir():
        if digest is not None:
            raise DataError(f"no cache entry {digest!r} under {root}; `champion data inspect` lists them")
        return []
    if not files.is_owned(root, KIND):
        if root.resolve() == Path.cwd().resolve():
            raise ConfigError(
                f"refusing to clear {root}: it is the working directory and not a champion cache (no {files.MARKER} marker). "
                "Set data.cache_dir to the cache folder itself"
            )
        if not _holds_entries(root):
            raise ConfigError(
                f"refusing to clear {root}: it is not a champion cache (no {files.MARKER} marker and no cache entries), "
                "so nothing in it is champion's to delete. Check data.cache_dir"
            )
    if digest is not None:
        if "/" in digest or digest.startswith(".") or not _is_entry(root / digest):
            raise DataError(f"no cache entry {digest!r} under {root}; `champion data inspect` lists them")
        targets = [root / digest]
    else:
        targets = _champions_things(root)
    for target in targets:  # every target is placed before anything goes: a refusal deletes nothing
        files.check_inside(target, root)
    names = [t.relative_to(root).as_posix() for t in targets]
    if not targets or (confirm is not None and not confirm(names)):
        return []
    claim_root(root)  # marked already, or a cache from before markers: adopted only now, once confirmed
    for target in targets:
        if (target / SYNC_STATE).is_file():
            _remove_mirror(target, root)
        else:
            files.remove_owned(target, root)
        files.remove_empty_parents(target, root)  # s3/<bucket>/ left empty by its last mirror, ...
    return names


def load_entry(entry: Path, memory_budget_mb: float = float("inf"), splits: tuple[str, ...] = SPLITS) -> Dataset:
    """Read a cache entry; images larger than the memory budget are memory-mapped, not loaded.

    Args:
        entry: The entry's folder.
        memory_budget_mb: Larger image arrays are memory-mapped.
        splits: Read only the rows of these splits (the images are memory-mapped and only those rows copied).
    """
    manifest = read_manifest(entry / "manifest.json")
    images_path = entry / IMAGES
    with np.load(entry / "splits.npz") as z:
        indices = {name: z[name] for name in SPLITS}
    labels = np.load(entry / "labels.npy")
    partial = tuple(splits) != SPLITS
    if partial:
        rows = np.unique(np.concatenate([indices[s] for s in splits]))
        images = np.asarray(np.load(images_path, mmap_mode="r")[rows])
        labels, indices = labels[rows], subset(indices, rows)
        manifest["partial"] = list(splits)
    else:
        mmap = "r" if images_path.stat().st_size > memory_budget_mb * 1e6 else None
        images = np.load(images_path, mmap_mode=mmap)
    return Dataset(manifest["digest"], manifest["source"], entry, images, labels, manifest["classes"], indices, manifest)


def read_manifest(path: Path) -> dict:
    """An entry's manifest. Its "files", a row per image (20 MB read back for 100,000), is read only
    when first used, if written last as `write_rest` writes it; otherwise the file is parsed whole."""
    head: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line == ' "files": {\n':
                if all(_FILE_ROW.fullmatch(rest) for rest in f):  # only file rows and the closing braces follow
                    return json.loads("".join(head) + ' "files": {}\n}') | {"files": _Files(path)}
                break
            head.append(line)
    return json.loads(path.read_text())


class _Files(Mapping[str, str]):
    """A manifest's "files" (relative path -> sha256), read from it when first used."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._files: dict[str, str] | None = None

    def _read(self) -> dict[str, str]:
        if self._files is None:
            self._files = json.loads(self.path.read_text())["files"]
        return self._files

    def __getitem__(self, name: str) -> str:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


_FILE_ROW = re.compile(r'  "(?:[^"\\]|\\.)*": "[0-9a-f]{64}",?\n| }\n|}\n?')


def write_rest(folder: Path, labels: np.ndarray, splits: dict[str, np.ndarray], manifest: dict, file_digests: Iterable[tuple[str, str]]) -> None:
    """The entry's files other than the images, into its temporary folder. The manifest gets
    `file_digests` (relative path, sha256) as its last key, "files", streamed: the bytes of
    `json.dumps(manifest | {"files": dict(file_digests)}, indent=1)`, without that string or dict."""
    np.save(folder / "labels.npy", labels.astype(np.int64))
    np.savez(folder / "splits.npz", **splits)
    # The manifest is written last: it is what marks the folder's content as complete.
    head = json.dumps(manifest | {"files": {}}, indent=1)
    assert head.endswith('"files": {}\n}'), "files must be the manifest's last key"
    with open(folder / "manifest.json", "w", encoding="utf-8") as out:
        out.write(head[: -len("{}\n}")])
        sep = "{\n"
        for name, digest in file_digests:
            out.write(f"{sep}  {json.dumps(name)}: {json.dumps(digest)}")
            sep = ",\n"
        out.write("{}\n}" if sep == "{\n" else "\n }\n}")


class NpyWriter:
    """An .npy file written row chunk by row chunk, whose row count is known only at the end.

    The header is written first for zero rows and rewritten in place on `close` with the count:
    numpy pads every header so that the first axis may grow to 21 digits without changing its
    length, so the file is byte for byte what `np.save` of the whole array would have written.
    Rows are written with plain writes, not a memory map: written pages then sit in the page cache,
    not in this process's resident memory.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: np.dtype = np.dtype(np.uint8)) -> None:
        self.path, self.row_shape, self.dtype = path, tuple(row_shape), np.dtype(dtype)
        self.rows = 0
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.header = self._header(0)
        self.file.write(self.header)

    def _header(self, rows: int) -> bytes:
        buf = io.BytesIO()
        meta = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (rows, *self.row_shape)}
        np.lib.format.write_array_header_1_0(buf, meta)
        return buf.getvalue()

    def write(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape or rows.dtype != self.dtype:
            raise ValueError(f"rows of shape {rows.shape[1:]} {rows.dtype}, expected {self.row_shape} {self.dtype}")
        self.file.write(np.ascontiguousarray(rows).data)
        self.rows += len(rows)

    def close(self) -> None:
        if self.file.closed:
            return
        try:
            header = self._header(self.rows)
            if len(header) != len(self.header):  # cannot happen with numpy's padding; never write a corrupt file
                raise RuntimeError(f"{self.path}: the .npy header changed length ({len(self.header)} -> {len(header)})")
            self.file.seek(0)
            self.file.write(header)
        finally:
            self.file.close()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.file.close()  # the half-written file goes with its temporary folder


class HashIndex:
    """sha256 of files, remembered by (absolute path, size, mtime_ns) in `<root>/.file-hashes.json`.

    A cache hit then costs a stat per file instead of reading every byte (seconds for Imagenette).
    Like rsync and git, an edit that keeps both size and modification time goes unnoticed;
    `champion data clear` forgets the index.

    Held compactly, for it has a row per file of every source seen (as a dict of lists, 100,000
    files took 40 MB): size, mtime_ns and raw digest in flat arrays. The files of the source being
    prepared (`folder` and its relative `names`) are rows by position, so their paths are not held
    again; other paths map to their rows in a dict. The file is read and written as a stream, never
    as one JSON string or one parsed dict.
    """

    def __init__(self, path: Path, hasher: Callable[[Path], str], folder: Path | None = None, names: Sequence[str] = ()) -> None:
        self.path = path
        self.hasher = hasher
        self.changed = False
        self._lock = threading.Lock()  # hashing runs on threads; a row is claimed and filled at once
        self._prefix = os.path.join(folder.resolve(), "") if folder is not None else None
        self._names = names
        self._by_name: dict[str, int] | None = None  # name -> position, made only when a path must be placed
        self._has = np.zeros(len(names), dtype=bool)
        self._own = np.zeros((len(names), 2), dtype=np.int64)  # size, mtime_ns of `names`
        self._own_digests = np.zeros((len(names), 32), dtype=np.uint8)
        self._rows: dict[str, int] = {}  # any other resolved path -> row
        self._sizes, self._mtimes, self._digests = array("q"), array("q"), bytearray()  # 32 bytes a row
        try:
            self._load()
        except (OSError, ValueError):
            self._forget()
            self._load_other()
        self._by_name = None  # needed again only for the odd symlinked file
        self.changed = False

    def _forget(self) -> None:
        self._has[:] = False
        self._rows, self._sizes, self._mtimes, self._digests = {}, array("q"), array("q"), bytearray()

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            if f.read(1) != b"{":
                raise ValueError("not an index as champion writes it")
            rest, at = b"", 0
            while block := f.read(1 << 20):  # 1 MB at a time: the file is never held whole
                rest = rest[at:] + block
                at = self._parse(rest)
            if rest[at:].strip() != b"}":
                raise ValueError("not an index as champion writes it")

    def _parse(self, text: bytes) -> int:
        """Add the whole entries at the start of `text`; return where the first incomplete one starts."""
        at = 0
        while m := _ENTRY.match(text, at):
            key = m[1].decode() if b"\\" not in m[1] else json.loads(b'"' + m[1] + b'"')
            self.record(key, int(m[2]), int(m[3]), m[4].decode())
            at = m.end()
        return at

    def _load_other(self) -> None:
        """An index written some other way (still JSON): parsed whole; unreadable ones are ignored."""
        try:
            for key, (size, mtime_ns, digest) in json.loads(self.path.read_text()).items():
                self.record(key, size, mtime_ns, digest)
        except (OSError, ValueError, TypeError, AttributeError):
            self._forget()  # missing or unreadable: every file is hashed afresh

    def _position(self, key: str, item: int | None = None) -> int | None:
        """Where in `names` the file at `key` (a resolved path) is, if it is one of them."""
        if self._prefix is None or not key.startswith(self._prefix):
            return None
        if item is not None and key == self._prefix + self._names[item]:
            return item  # the usual case: no name map needed
        if self._by_name is None:
            self._by_name = {name: i for i, name in enumerate(self._names)}
        return self._by_name.get(key[len(self._prefix) :])

    def lookup(self, key: str, size: int, mtime_ns: int, item: int | None = None) -> bytes | None:
        """The known raw digest of the file at `key` (its resolved path; `item`: its position in
        `names`, if known), if its size and mtime match."""
        i = self._position(key, item)
        if i is not None:
            ok = self._has[i] and self._own[i, 0] == size and self._own[i, 1] == mtime_ns
            return self._own_digests[i].tobytes() if ok else None
        row = self._rows.get(key)
        if row is None or self._sizes[row] != size or self._mtimes[row] != mtime_ns:
            return None
        return bytes(self._digests[32 * row : 32 * row + 32])

    def known_names(self) -> np.ndarray | None:
        """The raw digests (N, 32 uint8: not "S32", for numpy strips its trailing zero bytes) of
        every file in `names` when each is known and unchanged, else None (at the first that is not:
        the source then has to be read anyway)."""
        assert self._prefix is not None
        out = np.empty((len(self._names), 32), dtype=np.uint8)
        for i, name in enumerate(self._names):
            digest = self.lookup(*self._stat(Path(self._prefix, name)), item=i)
            if digest is None:
                return None
            out[i] = np.frombuffer(digest, dtype=np.uint8)
        return out

    def record(self, key: str, size: int, mtime_ns: int, digest: str, item: int | None = None) -> None:
        """Remember a hash: `key` is the file's resolved path (`item`: its position in `names`, if
        known), the stat taken before reading the bytes hashed (a decoder's, so that the hash and the
        pixels come from the same bytes)."""
        raw = bytes.fromhex(digest)
        if len(raw) != 32:
            raise ValueError(f"not a sha256: {digest!r}")
        with self._lock:
            self.changed = True
            i = self._position(key, item)
            if i is not None:
                self._has[i], self._own[i], self._own_digests[i] = True, (size, mtime_ns), np.frombuffer(raw, dtype=np.uint8)
                return
            row = self._rows.setdefault(key, len(self._rows))
            if row == len(self._sizes):
                self._sizes.append(size)
                self._mtimes.append(mtime_ns)
                self._digests += raw
            else:
                self._sizes[row], self._mtimes[row] = size, mtime_ns
                self._digests[32 * row : 32 * row + 32] = raw

    def digest(self, file: Path) -> str:
        key, size, mtime_ns = self._stat(file)
        known = self.lookup(key, size, mtime_ns)
        if known is not None:
            return known.hex()
        digest = self.hasher(file)
        self.record(key, size, mtime_ns, digest)
        return digest

    @staticmethod
    def _stat(file: Path) -> tuple[str, int, int]:
        st = file.stat()
        return str(file.resolve()), st.st_size, st.st_mtime_ns

    def save(self) -> None:
        """Write the index as `json.dumps` of {path: [size, mtime_ns, hex digest]} would, streamed."""
        if not self.changed:
            return
        rows = ((key, self._sizes[r], self._mtimes[r], self._digests[32 * r : 32 * r + 32]) for r, key in enumerate(self._rows))
        own = ((f"{self._prefix}{self._names[i]}", *self._own[i], self._own_digests[i]) for i in np.flatnonzero(self._has))
        with files.replacing(self.path) as tmp, open(tmp, "w", encoding="utf-8") as out:  # concurrent writers: the last whole index wins
            sep = "{"
            for key, size, mtime_ns, digest in itertools.chain(rows, own):
                out.write(f'{sep}{json.dumps(key)}: [{size}, {mtime_ns}, "{bytes(digest).hex()}"]')
                sep = ", "
            out.write("{}" if sep == "{" else "}")


# One entry of the index as json.dumps writes it; a file not made of these is unreadable (ignored).
_ENTRY = re.compile(rb'(?:, )?"((?:[^"\\]|\\.)*)": \[(\d+), (-?\d+), "([0-9a-f]{64})"\]')


def _refuse_obvious(root: Path) -> None:
    """Folders that are never a cache to clear, whatever they hold."""
    resolved, home = root.resolve(), Path.home().resolve()
    what = (
        "the filesystem root" if resolved == Path(resolved.anchor)
        else "the home folder" if resolved == home
        else "a folder above the home folder" if resolved in home.parents
        else None
    )  # fmt: skip
    if what:
        raise ConfigError(
            f"refusing to clear {root}: it is {what}. Set data.cache_dir to the cache folder itself "
            "(default $XDG_CACHE_HOME/champion, ~/.cache/champion)"
        )


def _is_entry(folder: Path) -> bool:
    """A folder holding a complete entry: a manifest with the expected keys naming this folder."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and _MANIFEST_KEYS <= manifest.keys() and manifest["digest"] == folder.name


def _remove_mirror(folder: Path, root: Path) -> None:
    """Remove the files an S3 sync fetched into `folder` (its state lists them), then the state;
    a file someone else put there stays, and so do the folders that still hold one."""
    try:
        fetched = json.loads((folder / SYNC_STATE).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        fetched = {}  # an unreadable state lists nothing: only the state itself goes
    paths = [folder / rel for rel in fetched if ".." not in Path(rel).parts]
    for path in paths:
        files.check_inside(path, root)
    for path in [*paths, folder / SYNC_STATE]:
        if path.is_file() or path.is_symlink():
            files.remove_owned(path, root)
            files.remove_empty_parents(path, root)


def _holds_entries(root: Path) -> bool:
    return any(_is_entry(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


# Temporary names champion gives things in the cache root (entries being written, the hash index
# and the marker being replaced); a user's own `.tmp-notes` matches none of them.
_OWN_TEMPORARY = re.compile(rf"{re.escape(files.TMP_PREFIX)}([0-9a-f]{{16}}-|{re.escape(HASH_INDEX)}\.|{re.escape(files.MARKER)}\.)")


def _champions_things(root: Path) -> list[Path]:
    """Everything under `root` that champion wrote and recognises, for clearing it all."""
    out = [p for p in sorted(root.iterdir()) if (p.is_dir() and _is_entry(p)) or _OWN_TEMPORARY.match(p.name)]
    if (root / HASH_INDEX).is_file():
        out.append(root / HASH_INDEX)
    # KNOWN: the datasets `fetch` writes, each in its own folder.
    out += [root / DOWNLOADS / name for name in KNOWN if (root / DOWNLOADS / name).is_dir()]
    if (root / S3).is_dir():
        out += sorted(state.parent for state in (root / S3).rglob(SYNC_STATE))
    return out
