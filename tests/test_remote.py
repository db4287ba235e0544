"""remote.sync against a real S3 endpoint on loopback (moto in server mode), through real s3fs and botocore."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("s3fs", reason="s3fs is needed for s3:// sources")
pytest.importorskip("moto.server", reason="moto[server] provides the loopback S3 endpoint")
boto3 = pytest.importorskip("boto3")

from champion.errors import DataError  # noqa: E402
from champion.ingest.remote import STATE_NAME, sync  # noqa: E402
from servers import free_port, moto_s3  # noqa: E402

OBJECTS = {
    "data/cats/a.png": b"\x89PNG cat",
    "data/dogs/b.png": b"\x89PNG dog, a little longer",
    "data/empty/": b"",  # folder marker, as the S3 console creates them
    "data/.DS_Store": b"finder junk",
}
MIRRORED = {"cats/a.png": OBJECTS["data/cats/a.png"], "dogs/b.png": OBJECTS["data/dogs/b.png"]}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with fake credentials and no trace of the user's AWS setup."""
    with pytest.MonkeyPatch.context() as mp, moto_s3(mp) as url:
        yield url


@pytest.fixture
def s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh bucket holding two class folders, a folder marker and a hidden file."""
    name = f"champion-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    for key, body in OBJECTS.items():
        s3.put_object(Bucket=name, Key=key, Body=body)
    return name


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_sync_mirrors_files(endpoint: str, bucket: str, tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    uri = f"s3://{bucket}/data"
    result = sync(uri, tmp_path / "mirror", endpoint_url=endpoint, progress=lambda *a: calls.append(a))

    assert (result.fetched, result.skipped) == (2, 0)
    assert set(result.files) == set(MIRRORED)
    files = tree(tmp_path / "mirror")
    files.pop(STATE_NAME)
    assert files == MIRRORED  # identical bytes; no .DS_Store, no "empty" marker, no temporaries
    assert not (tmp_path / "mirror" / "empty").exists()
    assert calls[0] == (f"syncing {uri}", 0, 2)
    assert calls[-1] == (f"syncing {uri}", 2, 2)


def test_second_sync_fetches_nothing(endpoint: str, bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    first = sync(f"s3://{bucket}/data/", dest, endpoint_url=endpoint)
    stamps = {rel: (dest / rel).stat().st_mtime_ns for rel in MIRRORED}

    second = sync(f"s3://{bucket}/data/", dest, endpoint_url=endpoint)

    assert (second.fetched, second.skipped) == (0, 2)
    assert second.files == first.files
    assert {rel: (dest / rel).stat().st_mtime_ns for rel in MIRRORED} == stamps  # not rewritten


def test_changed_object_is_fetched_again(endpoint: str, bucket: str, s3: Any, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)
    s3.put_object(Bucket=bucket, Key="data/cats/a.png", Body=b"\x89PNG another cat")

    result = sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)

    assert (result.fetched, result.skipped) == (1, 1)
    assert (dest / "cats/a.png").read_bytes() == b"\x89PNG another cat"


def test_object_deleted_from_the_bucket_leaves_the_mirror(endpoint: str, bucket: str, s3: Any, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)
    (dest / "mine.txt").write_text("a file the mirror did not fetch is never touched")
    s3.delete_object(Bucket=bucket, Key="data/cats/a.png")

    result = sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)

    assert result.removed == 1 and not (dest / "cats/a.png").exists()
    assert (dest / "dogs/b.png").is_file() and (dest / "mine.txt").is_file()


def test_deleted_local_file_is_fetched_again(endpoint: str, bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)
    (dest / "dogs/b.png").unlink()

    result = sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)

    assert (result.fetched, result.skipped) == (1, 1)
    assert (dest / "dogs/b.png").read_bytes() == MIRRORED["dogs/b.png"]


def test_endpoint_from_environment(endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert sync(f"s3://{bucket}/data", tmp_path / "mirror").fetched == 2


def test_missing_bucket(endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="bucket 'no-such-bucket' does not exist"):
        sync("s3://no-such-bucket/data", tmp_path / "mirror", endpoint_url=endpoint)


def test_empty_prefix(endpoint: str, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no objects"):
        sync(f"s3://{bucket}/nothing-here", tmp_path / "mirror", endpoint_url=endpoint)
    assert not (tmp_path / "mirror").exists()  # a failed sync creates nothing


def test_unreachable_endpoint(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # a port that was free a moment ago: nothing listens there
    with pytest.raises(DataError, match="data.s3.endpoint_url") as info:
        sync("s3://bucket/data", tmp_path / "mirror", endpoint_url=closed)
    assert closed in str(info.value)


def test_no_credentials(endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DataError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        sync(f"s3://{bucket}/data", tmp_path / "mirror", endpoint_url=endpoint)


def test_no_temporary_files_left(endpoint: str, bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        [STATE_NAME, *MIRRORED]
    )


def test_failed_download_leaves_no_partial_file(endpoint: str, bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    (dest / "cats/a.png").mkdir(parents=True)  # a folder in the way: the rename into place must fail

    with pytest.raises(DataError, match="cats/a.png"):
        sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)

    assert not [p for p in dest.rglob("*.part")]
    (dest / "cats/a.png").rmdir()
    # The download that did succeed was recorded, so the retry fetches only the one that failed.
    result = sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)
    assert (result.fetched, result.skipped) == (1, 1)


def test_single_object_uri(endpoint: str, bucket: str, tmp_path: Path) -> None:
    result = sync(f"s3://{bucket}/data/dogs/b.png", tmp_path / "mirror", endpoint_url=endpoint)
    assert set(result.files) == {"b.png"}
    assert (tmp_path / "mirror/b.png").read_bytes() == MIRRORED["dogs/b.png"]


def test_class_deleted_from_the_bucket_leaves_no_empty_folder(endpoint: str, bucket: str, s3: Any, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    s3.put_object(Bucket=bucket, Key="data/cats/deep/c.png", Body=b"\x89PNG deeper cat")
    sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)
    (dest / "dogs" / "mine").mkdir()  # a folder the mirror did not make: kept even though it is empty
    for key in ("data/cats/a.png", "data/cats/deep/c.png", "data/dogs/b.png"):
        s3.delete_object(Bucket=bucket, Key=key)
    s3.put_object(Bucket=bucket, Key="data/birds/d.png", Body=b"\x89PNG bird")

    result = sync(f"s3://{bucket}/data", dest, endpoint_url=endpoint)

    assert result.removed == 3
    assert not (dest / "cats").exists()  # emptied, so removed, down to the deepest folder
    assert (dest / "dogs" / "mine").is_dir() and not (dest / "dogs" / "b.png").exists()
    assert tree(dest).keys() == {STATE_NAME, "birds/d.png"}


def test_ingest_after_a_class_is_deleted_from_the_bucket(endpoint: str, s3: Any, tmp_path: Path) -> None:
    """The next ingest sees the classes that remain, not an empty class folder."""
    import io

    import numpy as np
    from PIL import Image

    from champion import ingest
    from champion.config import DataConfig

    name = f"champion-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee", "wasp"):
        for i in range(4):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(buf, "PNG")
            s3.put_object(Bucket=name, Key=f"set/{cls}/{i}.png", Body=buf.getvalue())
    cfg = DataConfig(source=f"s3://{name}/set", cache_dir=str(tmp_path / "cache"), validation_split=0.25)
    cfg.s3.endpoint_url = endpoint
    assert ingest.prepare(cfg, seed=0).classes == ["ant", "bee", "wasp"]
    for i in range(4):
        s3.delete_object(Bucket=name, Key=f"set/wasp/{i}.png")

    assert ingest.prepare(cfg, seed=0).classes == ["ant", "bee"]
