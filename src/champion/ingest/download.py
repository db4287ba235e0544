"""Download the standard datasets from their public mirrors into a cache folder, checksums verified.

`fetch(name, root)` makes sure `<root>/<name>/` holds the dataset and returns its folder. Each file
is streamed to a temporary `.tmp-<file>.<random>` beside its final name, hashed on the way, and
renamed into place only when its checksum matches (`champion.files.replacing`): a file under its
final name is always whole and verified. Archives (Imagenette) are extracted into a temporary
folder and renamed into place the same way. Mirrors are tried once each, in order; when all fail the
error lists every URL and why.

Why not `torchvision.datasets.utils` (0.29), which has the same verbs: `download_url` writes straight
to the final name (a killed download leaves a torn file that looks present), has no time-out,
draws a tqdm bar on stderr that `--quiet` cannot silence, quietly retries an https URL over plain
http, checks md5 only and raises a bare RuntimeError that leaves the bad file in place;
`extract_archive` calls `tarfile.extractall` without a filter, which on Python < 3.14 lets an
archive write outside its folder (`../evil`). Keeping those guarantees around it would take more
code than the ~40 lines of streaming and extraction below.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from champion.errors import ConfigError, DataError, DiskFullError
from champion.files import TMP_PREFIX, no_room, publish_dir, replacing
from champion.types import Progress


TIMEOUT = 60.0  # seconds without a byte before a mirror counts as failed
CHUNK = 64 * 1024
REPORT_EVERY = 1024 * 1024  # bytes between progress calls: often enough to move a bar, rarely enough to be free
USER_AGENT = "champion"  # some mirrors refuse urllib's default agent


@dataclass(frozen=True)
class Remote:
    """Where a dataset is published and what its files must hash to."""

    mirrors: tuple[str, ...]
    """Base URLs, tried in order; a file's URL is the base plus its name."""
    files: dict[str, str]
    """File name -> md5 (32 hex digits) or sha256 (64 hex digits)."""
    extract: str | None = None
    """For a dataset shipped as one archive: the folder the archive holds, which `fetch` returns."""


_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# Mirrors and checksums as torchvision publishes them (torchvision/datasets/mnist.py, imagenette.py).
KNOWN: dict[str, Remote] = {
    "mnist": Remote(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        files=dict(zip(_MNIST_FILES, (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ))),
    ),  # fmt: skip
    "fashion_mnist": Remote(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=dict(zip(_MNIST_FILES, (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ))),
    ),  # fmt: skip
    "imagenette": Remote(  # the 160 px variant: shortest side 160, about 94 MB
        mirrors=("https://s3.amazonaws.com/fast-ai-imageclas/",),
        files={"imagenette2-160.tgz": "e793b78cc4c9e9a4ccc0c1155377a412"},
        extract="imagenette2-160",
    ),
}


def fetch(
    name: str,
    root: Path,
    mirror: str | None = None,
    progress: Progress | None = None,
    *,
    checksums: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Path:
    """Make sure dataset `name` is present under `root`, downloading what is missing; return its folder.

    Files already present with the right checksum are kept; missing or wrong ones are downloaded.

    Args:
        name: "mnist", "fashion_mnist" or "imagenette" (the 160 px variant).
        root: Cache folder; the dataset lands in `root/name/`.
        mirror: Base URL that replaces the default mirrors (files are fetched from `mirror + filename`).
        progress: Called as (f"downloading {filename}", bytes done, bytes total or 0 if unknown).
        checksums: File name -> md5 or sha256 overriding the published one, for mirrors serving rebuilt files.
        timeout: Seconds a mirror may stay silent before it counts as failed.

    Returns:
        For mnist and fashion_mnist, the folder holding the four IDX .gz files under their canonical
        names; for imagenette, the extracted `imagenette2-160` folder (holding train/ and val/).

    Raises:
        ConfigError: Unknown dataset, or `checksums` naming a file the dataset does not have.
        DataError: Every mirror failed for a file (network, HTTP error or checksum mismatch), or
            the archive could not be extracted safely.
    """
    if name not in KNOWN:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(KNOWN)}")
    remote = KNOWN[name]
    expected = {**remote.files, **_checked_overrides(name, remote, checksums or {})}
    mirrors = (mirror if mirror.endswith("/") else mirror + "/",) if mirror else remote.mirrors
    folder = Path(root) / name
    if remote.extract and (folder / remote.extract).is_dir():
        return folder / remote.extract  # extracted folders appear only when whole, so presence suffices
    folder.mkdir(parents=True, exist_ok=True)
    for filename, digest in expected.items():
        target = folder / filename
        if target.is_file() and _hash_file(target, digest) == digest:
            continue
        _download(name, filename, digest, [base + filename for base in mirrors], folder, progress, timeout)
    if remote.extract:
        return _extract(folder / next(iter(remote.files)), folder, remote.extract)
    return folder


def _checked_overrides(name: str, remote: Remote, checksums: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(checksums) - set(remote.files))
    if unknown:
        raise ConfigError(f"checksums name files {name} does not have: {unknown}; its files: {list(remote.files)}")
    bad = {f: d for f, d in checksums.items() if len(d) not in (32, 64)}
    if bad:
        raise ConfigError(f"checksums must be md5 (32 hex digits) or sha256 (64): {bad}")
    return {f: d.lower() for f, d in checksums.items()}


def _hasher(digest: str) -> hashlib._Hash:
    # The length of the expected digest says which algorithm produced it.
    return hashlib.md5(usedforsecurity=False) if len(digest) == 32 else hashlib.sha256()


def _algorithm(digest: str) -> str:
    return "md5" if len(digest) == 32 else "sha256"


def _hash_file(path: Path, digest: str) -> str:
    h = _hasher(digest)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK * 16):
            h.update(chunk)
    return h.hexdigest()


def _download(
    name: str, filename: str, digest: str, urls: list[str], folder: Path, progress: Progress | None, timeout: float
) -> None:
    """Fetch one file from the first URL that serves it with the right checksum, else raise DataError."""
    failures = []
    for url in urls:
        try:
            _download_one(url, filename, digest, folder, progress, timeout)
            return
        except DiskFullError:
            raise  # no mirror would do better: the cache's disk is full
        except (OSError, http.client.HTTPException, _Mismatch) as e:  # URLError and timeouts are OSErrors
            failures.append(f"  {url}: {_describe(e)}")
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # an HTTPError holds the open response
    raise DataError(
        f"could not download {filename} for {name}; tried:\n" + "\n".join(failures) + "\n"
        f"Fix: set data.mirror to a mirror that serves {filename} (pass its checksums if its files were rebuilt), "
        f"or place the files in {folder} yourself."
    )


class _Mismatch(Exception):
    """The bytes arrived but are not the expected file."""


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"unreachable ({e.reason})"
    return str(e) or type(e).__name__


def _download_one(
    url: str, filename: str, digest: str, folder: Path, progress: Progress | None, timeout: float
) -> None:
    """Stream `url` to a temporary file beside `filename`, then rename it into place if the checksum matches."""
    with replacing(folder / filename) as part:
        h = _hasher(digest)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with open(part, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = reported = 0
            what = f"downloading {filename}"
            if progress:
                progress(what, 0, total)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress and done - reported >= REPORT_EVERY:
                    progress(what, done, total)
                    reported = done
            if progress and reported != done:
                progress(what, done, total)
        if total and done != total:
            raise _Mismatch(f"truncated: got {done} of {total} bytes")
        got = h.hexdigest()
        if got != digest:
            raise _Mismatch(f"{_algorithm(digest)} mismatch for {filename}: expected {digest}, got {got}")


def _extract(archive: Path, folder: Path, top: str) -> Path:
    """Extract `archive` and rename its `top` folder into `folder`; the archive is removed afterwards."""
    final = folder / top
    scratch = Path(tempfile.mkdtemp(dir=folder, prefix=f"{TMP_PREFIX}{top}.extract-"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                # The "data" filter refuses absolute paths, `..` and links leaving the folder, and device files.
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            if (full := no_room(e, folder, f"the extracted {top}/ folder")) is not None:
                raise full from e  # the archive is fine: deleting it would only cost a download
            raise DataError(
                f"could not extract {archive}: {e}. Delete it so the next run downloads it again, "
                f"or place the extracted {top}/ folder in {folder} yourself."
            ) from e
        if not (scratch / top).is_dir():
            raise DataError(f"{archive} does not hold a {top}/ folder; delete it, or check data.mirror")
        publish_dir(scratch / top, final)  # another process finishing first is fine: its copy is kept
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # The folder is what gets read from now on; keeping a second copy of ~94 MB would only waste space.
    archive.unlink(missing_ok=True)
    return final
