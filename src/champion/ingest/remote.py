"""Remote data: mirror an `s3://bucket/prefix` into a local folder, like `aws s3 sync`.

Objects go through fsspec/s3fs, so credentials, region and signing are botocore's business. A small
state file `<dest>/.champion-sync.json` records the size and ETag of every object at the last sync;
an object whose size and ETag still match, and whose local copy is still there at that size, is not
fetched again. Every download lands under a temporary hidden name first and is renamed into place,
so a killed sync never leaves a partial file under a real name (and ingest ignores hidden files).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from champion.errors import DataError, DiskFullError
from champion.files import S3_CLIENT_CONFIG, atomic_write, remove_empty_parents, replacing
from champion.types import Progress

# fsspec and botocore (s3fs) are imported inside the functions that use them: s3fs is an optional
# dependency, needed only for s3:// sources, and every `champion.ingest` import loads this module.

STATE_NAME = ".champion-sync.json"
STATE_VERSION = 1
WORKERS = 8  # image files are small: latency, not bandwidth, is what parallel downloads hide
CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary credentials), "
    "or AWS_PROFILE to use a profile from ~/.aws/credentials"
)


@dataclass
class SyncResult:
    """What a sync did."""

    fetched: int
    skipped: int
    files: dict[str, str] = field(default_factory=dict)  # relative path -> ETag (or size when the server gives none)
    removed: int = 0  # previously mirrored files whose objects are gone from the bucket


@dataclass
class _Object:
    """One remote file to mirror."""

    remote: str  # "bucket/key", as s3fs names it
    rel: str  # path under dest, with "/" separators
    size: int
    etag: str | None


def sync(uri: str, dest: Path, endpoint_url: str | None = None, progress: Progress | None = None) -> SyncResult:
    """Mirror every object under `uri` into `dest`, keeping relative paths.

    Folder markers (keys ending in "/") and hidden files (any path component starting with ".") are
    ignored. Like `aws s3 sync --delete`, but only for files this mirror fetched itself: a file whose
    object is gone from the bucket is removed, and so are the folders that leaves empty.

    Args:
        uri: `s3://bucket/prefix`, or `s3://bucket/key` for a single object.
        dest: Local folder to mirror into; created if missing.
        endpoint_url: S3-compatible server (MinIO, Ceph, ...); defaults to `AWS_ENDPOINT_URL_S3`
            or `AWS_ENDPOINT_URL`, then AWS itself.
            Credentials and region come from the usual AWS environment variables and config files.
        progress: Called as `progress("syncing <uri>", done_files, total_files)`.

    Returns:
        How many files were fetched and skipped, and the relative path -> ETag of every mirrored file.

    Raises:
        DataError: The URI is malformed, the bucket does not exist, nothing is under the prefix, the
            credentials are missing or refused, the endpoint cannot be reached, or a download failed.
    """
    bucket, prefix = _parse(uri)
    endpoint = _endpoint(endpoint_url)
    fs = _filesystem(endpoint)
    where = endpoint or "the default AWS S3 endpoint"
    objects = _list_objects(fs, uri, bucket, prefix, where)

    dest.mkdir(parents=True, exist_ok=True)
    state_path = dest / STATE_NAME
    old = _read_state(state_path, uri)
    kept, todo = _unchanged(objects, old, dest)
    removed = _remove_gone(old, objects, dest)

    skipped = len(objects) - len(todo)
    description = f"syncing {uri}"
    if progress:
        progress(description, skipped, len(objects))
    done = itertools.count(skipped + 1)

    def tick() -> None:
        if progress:
            progress(description, next(done), len(objects))

    def record(arrived: list[_Object]) -> None:
        _write_state(state_path, uri, kept | {obj.rel: _entry(obj) for obj in arrived})

    failed = _fetch_all(fs, todo, dest, tick, record)
    if failed is not None:
        obj, error = failed
        raise _explain(error, f"downloading s3://{obj.remote}", bucket, where) from error

    files = {obj.rel: obj.etag or str(obj.size) for obj in objects}
    return SyncResult(fetched=len(todo), skipped=skipped, files=files, removed=removed)


def _endpoint(endpoint_url: str | None) -> str | None:
    """The S3 endpoint to use: the one given, else the AWS environment's, else None (AWS itself)."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise DataError(f"S3 endpoint {endpoint!r} is not a URL: set data.s3.endpoint_url to http(s)://host:port")
    return endpoint


def _list_objects(fs: Any, uri: str, bucket: str, prefix: str, where: str) -> list[_Object]:
    """The objects under the prefix worth mirroring; an error when there are none."""
    try:
        listing = fs.find(f"{bucket}/{prefix}" if prefix else bucket, detail=True)
    except FileNotFoundError as e:
        # The listing is a prefix query, so the only thing that can be missing is the bucket itself.
        raise DataError(
            f"S3 bucket {bucket!r} does not exist at {where}: check the bucket name in data.source ({uri}) "
            f"and that data.s3.endpoint_url points at the server that holds it"
        ) from e
    except Exception as e:
        raise _explain(e, f"listing {uri}", bucket, where) from e
    objects = _objects(listing, bucket, prefix)
    if not objects:
        what = "only folder markers or hidden files" if listing else "no objects"
        raise DataError(f"{uri} holds {what} at {where}: check the prefix in data.source, or upload the data first")
    return objects


def _entry(obj: _Object) -> dict[str, Any]:
    """An object's record in the state file."""
    return {"size": obj.size, "etag": obj.etag}


def _unchanged(
    objects: list[_Object], old: dict[str, dict[str, Any]], dest: Path
) -> tuple[dict[str, dict[str, Any]], list[_Object]]:
    """Split the objects into those whose local copy is current (with their records) and those to fetch."""
    kept: dict[str, dict[str, Any]] = {}
    todo: list[_Object] = []
    for obj in objects:
        seen = old.get(obj.rel)
        local = dest / obj.rel
        if seen == _entry(obj) and local.is_file() and local.stat().st_size == obj.size:
            kept[obj.rel] = seen
        else:
            todo.append(obj)
    return kept, todo


def _remove_gone(old: dict[str, dict[str, Any]], objects: list[_Object], dest: Path) -> int:
    """Delete the mirrored files whose objects left the bucket; how many there were.

    Like `aws s3 sync --delete`, but only for files this mirror fetched itself: an object deleted
    from the bucket must not live on in the local copy, and so in the data trained on.
    """
    # A state file edited by hand could name paths outside the mirror: those are never touched.
    gone = {rel for rel in set(old) - {obj.rel for obj in objects} if not ({"..", ""} & set(rel.split("/")))}
    for rel in gone:
        (dest / rel).unlink(missing_ok=True)
        # A class deleted from the bucket must not leave an empty class folder, which ingest refuses.
        remove_empty_parents(dest / rel, dest)
    return len(gone)


def _fetch_all(
    fs: Any, todo: list[_Object], dest: Path, tick: Callable[[], None], record: Callable[[list[_Object]], None]
) -> tuple[_Object, BaseException] | None:
    """Download `todo` in parallel, stopping at the first failure, which is returned.

    Args:
        tick: Called after each download that succeeded.
        record: Called once with the objects that arrived whole, also on a failure or Ctrl-C.
    """
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    futures: dict[Future[bool], _Object] = {pool.submit(_fetch, fs, obj, dest): obj for obj in todo}
    try:
        for future in as_completed(futures):
            error = future.exception()
            if error is not None:
                return futures[future], error
            tick()
        return None
    finally:
        # On a failure or Ctrl-C the queued downloads are dropped and the running ones finish; everything
        # that did arrive is recorded, so the next sync resumes instead of starting over.
        pool.shutdown(wait=True, cancel_futures=True)
        record([obj for future, obj in futures.items() if not future.cancelled() and future.exception() is None and future.result()])


def _parse(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/prefix` into the bucket and the prefix without surrounding slashes."""
    if not uri.startswith("s3://"):
        raise DataError(f"{uri!r} is not an S3 URI: write it as s3://bucket/prefix")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise DataError(f"{uri!r} names no bucket: write it as s3://bucket/prefix")
    return bucket, prefix.strip("/")


def _filesystem(endpoint: str | None) -> Any:
    """An s3fs filesystem for `endpoint`, with short timeouts and no cached listings."""
    import fsspec

    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    try:
        # skip_instance_cache: fsspec would otherwise hand back an instance whose cached listings
        # predate changes in the bucket, and a sync must see the bucket as it is now.
        return fsspec.filesystem(
            "s3", client_kwargs=client_kwargs, config_kwargs=S3_CLIENT_CONFIG, skip_instance_cache=True
        )
    except ImportError as e:
        raise DataError("s3:// data sources need s3fs: pip install s3fs") from e


def _objects(listing: dict[str, dict[str, Any]], bucket: str, prefix: str) -> list[_Object]:
    """The files in an s3fs `find` listing that are worth mirroring, with their paths relative to the prefix."""
    base = f"{bucket}/{prefix}" if prefix else bucket
    out = []
    for name, info in sorted(listing.items()):
        if name.endswith("/") or info.get("type") == "directory":
            continue  # folder markers hold no data
        # `base` itself is listed only when the URI names a single object: mirror it under its own name.
        rel = name.rsplit("/", 1)[-1] if name == base else name[len(base) + 1 :]
        parts = [p for p in rel.split("/") if p]  # "a//b" is a legal key; locally it can only be a/b
        if not parts or any(p.startswith(".") for p in parts):
            continue  # hidden files (.DS_Store, ...) are not data; this also rules out ".." escaping dest
        etag = info.get("ETag") or info.get("etag")
        out.append(_Object(name, "/".join(parts), int(info["size"]), etag.strip('"') if etag else None))
    return out


def _fetch(fs: Any, obj: _Object, dest: Path) -> bool:
    """Download one object under a temporary name and rename it into place.

    Returns:
        Whether the file has the size the listing promised; if not, the object changed during the
        sync and is left out of the state so that the next sync fetches it again.
    """
    target = dest / obj.rel
    with replacing(target) as tmp:
        fs.get_file(obj.remote, str(tmp))
    return target.stat().st_size == obj.size


def _explain(error: BaseException, doing: str, bucket: str, where: str) -> DataError | DiskFullError:
    """Turn an s3fs/botocore failure into a DataError that names the problem and the fix (a full disk stays what it is)."""
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(error, (DataError, DiskFullError)):
        return error
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return DataError(f"no AWS credentials found while {doing}: {CREDENTIALS_HINT}")
    if isinstance(error, PermissionError):
        return DataError(
            f"access denied while {doing} ({error}): the credentials must allow s3:ListBucket and "
            f"s3:GetObject on bucket {bucket!r}; {CREDENTIALS_HINT}"
        )
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return DataError(
            f"cannot reach the S3 endpoint {where} while {doing} ({error}): check that the server is up "
            f"and that data.s3.endpoint_url (or AWS_ENDPOINT_URL) is right"
        )
    if isinstance(error, FileNotFoundError):
        return DataError(f"an object disappeared while {doing} ({error}): it was deleted during the sync; run it again")
    return DataError(f"S3 failed while {doing}: {type(error).__name__}: {error}")


def _read_state(path: Path, uri: str) -> dict[str, dict[str, Any]]:
    """The size/ETag recorded per relative path at the last sync of `uri` into this folder."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        # No state, or an unreadable one: the only cost is fetching everything again.
        return {}
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or state.get("uri") != uri:
        return {}  # another source synced here last: its records say nothing about this one
    files = state.get("files")
    return files if isinstance(files, dict) else {}


def _write_state(path: Path, uri: str, files: dict[str, dict[str, Any]]) -> None:
    """Replace the state file atomically, so a crash leaves the old state or the new one, never half of one."""
    atomic_write(path, json.dumps({"version": STATE_VERSION, "uri": uri, "files": files}, indent=1, sort_keys=True))
