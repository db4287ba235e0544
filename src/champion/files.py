"""Files champion writes: atomic publication, and a marker that says which folders are champion's.

Two guarantees, used by the data cache, downloads, S3 mirrors, checkpoints and output folders:

1. Nothing half-written is ever taken for complete. A file or folder is written under a temporary
   hidden name beside its final one, flushed to disk, and renamed into place; a crash leaves the old
   content or the new one, plus at most a `.tmp-*` leftover that is never read.

       atomic_write(path, data)             # bytes or str
       with replacing(path) as tmp: ...     # fill `tmp` any way you like (stream, fs.get_file)
       publish_dir(tmp_folder, final)       # fsync a folder you filled, then rename it into place
       with staging_dir(final) as tmp: ...  # the same, with the temporary folder made and cleaned for you

   The temporary name lives in the destination's folder, so the rename never crosses file systems
   (a move across them is a copy, which a full disk cuts short under the final name). A write that
   finds no room (ENOSPC, or EDQUOT) is a DiskFullError naming the folder and what was being written;
   `no_room(exc)` says the same of such a failure raised anywhere else.

2. Nothing champion did not create is ever removed. `claim(folder, kind)` creates a folder with a
   marker file `.champion` (JSON: what it is, its kind, the format version) or checks that an
   existing one is champion's; `is_owned(folder)` tells; `remove_owned(path, root)` deletes only
   inside a folder champion owns and refuses anything else with a ConfigError (exit code 2);
   `remove_empty_parents(path, top)` then tidies the folders it left empty, never above `top`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from champion.errors import ConfigError, DiskFullError, chain

# Fail within seconds when an S3 endpoint is down or wrong instead of retrying for minutes; the read
# timeout is per socket read, not per object, so large files are not cut off. Every s3fs client uses it.
S3_CLIENT_CONFIG: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}
MARKER = ".champion"
MARKER_VERSION = 1
TMP_PREFIX = ".tmp-"  # every temporary name starts with this: readers skip it, `data clear` removes it
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
# Some writers lose the errno of a full disk (numpy's `tofile` says "N requested and M written", torch's
# zip writer raises a RuntimeError): their failure counts as one when the folder has less than this left.
NEARLY_FULL_BYTES = 1 << 20


def atomic_write(path: Path, data: bytes | str, what: str | None = None) -> None:
    """Replace `path` with `data` (str is written as UTF-8): readers see the old file or the new one, whole.

    `what` names the file in the error a full disk raises (default: its name).
    """
    with replacing(path, what) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def replacing(path: Path, what: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it is flushed and renamed onto `path`.

    On an exception the temporary file is removed and `path` is left as it was. A full disk raises
    DiskFullError naming the folder and `what` (default: the file's name).
    """
    path = Path(path)
    what = what or path.name
    with _writing(path.parent, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; published files get the usual permissions
        os.close(fd)
    tmp = Path(name)
    try:
        with _writing(path.parent, what):  # judged before the temporary file goes: it is what filled the disk
            yield tmp
            _fsync_file(tmp)  # the bytes reach the disk before the rename can: no whole-looking empty file after a crash
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish_dir(tmp: Path, final: Path) -> bool:
    """Flush the folder `tmp` (every file, and the folders) to disk, then rename it to `final`.

    Returns:
        True if `tmp` became `final`; False if `final` already existed (another process finished the
        same work first), in which case `tmp` is removed and `final` is left alone.
    """
    for folder, _, files in os.walk(tmp):
        for name in files:
            _fsync_file(Path(folder, name))
        _fsync_dir(Path(folder))
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    _fsync_dir(final.parent)  # the rename itself is durable too
    return True


@contextlib.contextmanager
def staging_dir(final: Path, what: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; on a clean exit it is published as `final`.

    If `final` appeared meanwhile (a concurrent writer of the same content), the new copy is dropped.
    On an exception the temporary folder is removed. A full disk raises DiskFullError naming the
    folder and `what` (default: the folder's name).
    """
    what = what or f"{final.name}/"
    with _writing(final.parent, what):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a published folder gets the usual permissions
    try:
        with _writing(final.parent, what):  # judged before the temporary folder goes: it is what filled the disk
            yield tmp
            publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def no_room(exc: BaseException, folder: Path | None = None, what: str | None = None) -> DiskFullError | None:
    """`exc` as a DiskFullError when it is a write that found no room, else None.

    ENOSPC or EDQUOT anywhere in the chain of `exc` says so; a plain OSError or RuntimeError without an
    errno (see NEARLY_FULL_BYTES) does when `folder` is given and its file system is all but full. The
    message names `folder` and `what`, by default the file the OSError names (its destination, for a copy).
    """
    found = _no_room_errno(exc)
    if isinstance(found, DiskFullError):
        return found  # already names its folder
    if found is None:
        lost_errno = type(exc) in (OSError, RuntimeError) and getattr(exc, "errno", None) is None
        if folder is None or not lost_errno or _free_bytes(Path(folder)) >= NEARLY_FULL_BYTES:
            return None
        code, named = errno.ENOSPC, None
    else:
        code, named = found.errno, found.filename2 or found.filename
    if folder is None and named is not None:
        folder, what = Path(os.fsdecode(named)).parent, what or Path(os.fsdecode(named)).name
    reason = os.strerror(code)
    reason = reason[:1].lower() + reason[1:]
    if folder is None:  # nothing named the file: say what failed
        error = DiskFullError(f"{reason}: a write failed ({exc}); free some space on that disk, or write somewhere else")
    else:
        error = DiskFullError(f"{reason} in {folder}: could not write {what or 'a file'}; free some space there or choose another folder")
    error.errno = code
    return error


@contextlib.contextmanager
def _writing(folder: Path, what: str) -> Iterator[None]:
    """Raise a write into `folder` that found no room as a DiskFullError naming `folder` and `what`."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        error = no_room(exc, folder, what)
        if error is None or error is exc:
            raise
        raise error from exc


def _no_room_errno(exc: BaseException) -> OSError | None:
    """The OSError with errno ENOSPC or EDQUOT in the chain of `exc` (its causes and contexts), if any."""
    return next((e for e in chain(exc) if isinstance(e, OSError) and e.errno in NO_ROOM), None)


def _free_bytes(folder: Path) -> float:
    """Bytes an unprivileged writer may still use on the file system of `folder` (or of its nearest existing parent)."""
    for place in (folder, *folder.parents):
        try:
            st = os.statvfs(place)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return float("inf")


def claim(folder: Path, kind: str, adopt: Callable[[Path], bool] | None = None) -> Path:
    """Make `folder` champion's folder of `kind`: create it with a marker, or check the marker it has.

    Args:
        folder: The folder; created (with its parents) when missing.
        kind: What the folder is for ("data-cache", "checkpoints", ...); a marker of another kind is refused.
        adopt: For an existing, unmarked, non-empty folder: returns True when its content shows it was
            written by champion before markers existed; it is then marked and kept.

    Returns:
        `folder`.

    Raises:
        ConfigError: The folder is another kind's, or holds things champion does not recognise as its own.
    """
    folder = Path(folder)
    marker = folder / MARKER
    if marker.is_file():
        found = _marker_kind(marker)
        if found != kind:
            raise ConfigError(f"{folder} is champion's {found or 'unreadable-marker'} folder, not a {kind} folder: choose another path")
        return folder
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder: choose a folder path for the {kind}")
    # Another process claiming the same new folder right now shows only its (temporary) marker file.
    occupied = folder.is_dir() and any(not p.name.startswith(TMP_PREFIX) and p.name != MARKER for p in folder.iterdir())
    if occupied and not (adopt and adopt(folder)) and not is_owned(folder, kind):
        raise ConfigError(
            f"{folder} already holds files that champion did not create, so champion will not use it as its {kind} "
            "(and will never delete anything in it): choose a new or empty folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    body = {"what": f"champion {kind}; champion may delete what it wrote here", "kind": kind, "format": MARKER_VERSION}
    atomic_write(marker, json.dumps(body), what=f"its marker file {MARKER}")
    return folder


def is_owned(folder: Path, kind: str | None = None) -> bool:
    """Whether `folder` carries champion's marker (of `kind`, when given)."""
    marker = Path(folder) / MARKER
    return marker.is_file() and (kind is None or _marker_kind(marker) == kind)


def remove_owned(path: Path, root: Path) -> None:
    """Delete `path` (file or folder) if it lies inside `root` and `root` is a folder champion owns.

    Raises:
        ConfigError: `root` carries no champion marker, or `path` is not strictly inside it (or is the marker).
    """
    root, path = Path(root), Path(path)
    if not is_owned(root):
        raise ConfigError(f"refusing to delete {path}: {root} is not a folder champion created (no {MARKER} marker)")
    check_inside(path, root)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def check_inside(path: Path, root: Path) -> None:
    """Refuse (ConfigError) a `path` that is not strictly inside `root`, or is its marker.

    A link is placed as a link, never followed: only its parent is resolved. Callers that delete
    several things check them all first, so that a refusal deletes nothing.
    """
    placed = Path(path).parent.resolve() / Path(path).name
    if Path(root).resolve() not in placed.parents or placed.name == MARKER:
        raise ConfigError(f"refusing to delete {path}: it is not inside champion's folder {root}")


def remove_empty_parents(path: Path, top: Path) -> None:
    """Remove the folders above `path` that are empty, up to (not including) `top`; stop at the first that is not."""
    top = Path(top).resolve()
    parent = Path(path).parent.resolve()
    while parent != top and top in parent.parents:
        try:
            parent.rmdir()  # fails on a folder that is not empty: exactly where to stop
        except OSError:
            return
        parent = parent.parent


def _marker_kind(marker: Path) -> str | None:
    try:
        body = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return body.get("kind") if isinstance(body, dict) else None


def _umask() -> int:
    """The process umask. Linux states it in /proc; os.umask can only read it by setting it, which
    would race with threads creating files meanwhile (S3 fetches run in a pool)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_cache_dir() -> Path:
    """Where champion keeps what it may rebuild (data cache, downloads, the outage journal): XDG's cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "champion"
