"""fetch() against a real HTTP server on loopback: real files, real checksums, real archives."""

from __future__ import annotations

import filecmp
import functools
import hashlib
import io
import os
import shutil
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from champion.ingest.download import KNOWN, Remote, fetch
from champion.errors import ConfigError, DataError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
REBUILT_TRAIN_IMAGES_MD5 = "fec16f1520679dcd367d323fcdfc6281"  # see shared/data/mnist/README.md
MNIST_FILES = list(KNOWN["mnist"].files)


@dataclass
class Server:
    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def serve() -> Iterator[Callable[[Path], Server]]:
    """Start static file servers on 127.0.0.1 that record every requested path; stopped after the test."""
    running: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(directory: Path) -> Server:
        server = Server(url="")

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        thread.start()
        running.append((httpd, thread))
        server.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        return server

    yield start
    for httpd, thread in running:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def shared_mnist() -> Path:
    if not SHARED_MNIST.is_dir():
        pytest.skip("needs ../shared/data/mnist")
    return SHARED_MNIST


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def fake_mnist(directory: Path, sizes: dict[str, int] | None = None) -> dict[str, str]:
    """Write small stand-ins for the four MNIST files; return their md5s, to pass as checksums."""
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for i, name in enumerate(MNIST_FILES):
        data = os.urandom((sizes or {}).get(name, 100 + i))
        (directory / name).write_bytes(data)
        sums[name] = md5(data)
    return sums


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a download or extraction left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-") or ".part-" in p.name or ".extract-" in p.name)


def test_mnist_downloads_the_real_files_once(shared_mnist: Path, serve, tmp_path: Path) -> None:
    server = serve(shared_mnist)
    checksums = {"train-images-idx3-ubyte.gz": REBUILT_TRAIN_IMAGES_MD5}

    folder = fetch("mnist", tmp_path / "cache", mirror=server.url, checksums=checksums)

    assert folder == tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_FILES)
    for name in MNIST_FILES:
        assert filecmp.cmp(folder / name, shared_mnist / name, shallow=False), name
    assert sorted(server.requests) == sorted(f"/{name}" for name in MNIST_FILES)

    assert fetch("mnist", tmp_path / "cache", mirror=server.url, checksums=checksums) == folder
    assert len(server.requests) == 4  # everything present and verified: nothing downloaded again


def test_published_md5_rejects_the_rebuilt_train_images(shared_mnist: Path, serve, tmp_path: Path) -> None:
    server = serve(shared_mnist)

    with pytest.raises(DataError, match=r"md5 mismatch for train-images-idx3-ubyte\.gz") as err:
        fetch("mnist", tmp_path, mirror=server.url)

    assert f"{server.url}train-images-idx3-ubyte.gz" in str(err.value)
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in str(err.value) and REBUILT_TRAIN_IMAGES_MD5 in str(err.value)
    assert "data.mirror" in str(err.value)
    assert not (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert leftovers(tmp_path / "mnist") == []


def test_missing_files_name_the_url_tried(serve, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    server = serve(tmp_path / "empty")

    with pytest.raises(DataError, match="HTTP 404") as err:
        fetch("mnist", tmp_path / "cache", mirror=server.url)

    assert f"{server.url}train-images-idx3-ubyte.gz" in str(err.value)
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_unreachable_mirror_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unreachable"):
        fetch("mnist", tmp_path, mirror="http://127.0.0.1:9/", timeout=5)  # port 9 (discard): refused


def test_mirrors_are_tried_in_order(serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    sums = fake_mnist(tmp_path / "good")
    dead, good = serve(tmp_path / "empty"), serve(tmp_path / "good")
    monkeypatch.setitem(KNOWN, "mnist", Remote(mirrors=(dead.url, good.url), files=sums))

    folder = fetch("mnist", tmp_path / "cache")

    assert all(filecmp.cmp(folder / n, tmp_path / "good" / n, shallow=False) for n in MNIST_FILES)
    assert len(dead.requests) == len(good.requests) == 4  # one try per mirror, no retries


def test_corrupted_file_is_downloaded_again_and_good_ones_kept(serve, tmp_path: Path) -> None:
    sums = fake_mnist(tmp_path / "mirror")
    server = serve(tmp_path / "mirror")
    folder = tmp_path / "cache" / "mnist"
    shutil.copytree(tmp_path / "mirror", folder)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")

    fetch("mnist", tmp_path / "cache", mirror=server.url.rstrip("/"), checksums=sums)

    assert server.requests == ["/t10k-labels-idx1-ubyte.gz"]
    name = "t10k-labels-idx1-ubyte.gz"
    assert filecmp.cmp(folder / name, tmp_path / "mirror" / name, shallow=False)


def test_progress_reports_growing_byte_counts(serve, tmp_path: Path) -> None:
    size = 3 * 1024 * 1024 + 17
    sums = fake_mnist(tmp_path / "mirror", sizes={"train-images-idx3-ubyte.gz": size})
    server = serve(tmp_path / "mirror")
    calls: list[tuple[str, int, int]] = []

    fetch("mnist", tmp_path / "cache", mirror=server.url, checksums=sums, progress=lambda *a: calls.append(a))

    big = [(done, total) for what, done, total in calls if what == "downloading train-images-idx3-ubyte.gz"]
    assert [done for done, _ in big] == sorted({done for done, _ in big})  # strictly increasing
    assert big[0][0] == 0 and big[-1] == (size, size)
    assert 4 <= len(big) <= 6  # about one call per MiB, not one per chunk
    assert {what for what, _, _ in calls} == {f"downloading {name}" for name in MNIST_FILES}


def make_tgz(path: Path, members: dict[str, bytes]) -> str:
    """Write a .tgz holding `members` (name -> content); return its md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return md5(path.read_bytes())


def test_imagenette_archive_is_extracted_into_place(serve, tmp_path: Path) -> None:
    members = {
        "imagenette2-160/train/n01440764/a.JPEG": b"tench",
        "imagenette2-160/train/n02102040/b.JPEG": b"springer",
        "imagenette2-160/val/n01440764/c.JPEG": b"tench too",
    }
    digest = make_tgz(tmp_path / "mirror" / "imagenette2-160.tgz", members)
    server = serve(tmp_path / "mirror")
    args = dict(mirror=server.url, checksums={"imagenette2-160.tgz": digest})

    folder = fetch("imagenette", tmp_path / "cache", **args)

    assert folder == tmp_path / "cache" / "imagenette" / "imagenette2-160"
    for name, data in members.items():
        assert (tmp_path / "cache" / "imagenette" / name).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "cache" / "imagenette").iterdir()) == ["imagenette2-160"]
    assert fetch("imagenette", tmp_path / "cache", **args) == folder
    assert len(server.requests) == 1


def test_imagenette_archive_escaping_its_folder_is_refused(serve, tmp_path: Path) -> None:
    digest = make_tgz(
        tmp_path / "mirror" / "imagenette2-160.tgz",
        {"imagenette2-160/train/n01440764/a.JPEG": b"tench", "../evil": b"outside"},
    )
    server = serve(tmp_path / "mirror")
    cache = tmp_path / "cache"

    with pytest.raises(DataError, match="could not extract"):
        fetch("imagenette", cache, mirror=server.url, checksums={"imagenette2-160.tgz": digest})

    assert not (cache / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (cache / "imagenette" / "imagenette2-160").exists()
    assert leftovers(cache / "imagenette") == []


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        fetch("cifar", tmp_path)
    with pytest.raises(ConfigError, match="images.gz"):
        fetch("mnist", tmp_path, checksums={"images.gz": "0" * 32})
    with pytest.raises(ConfigError, match="md5"):
        fetch("mnist", tmp_path, checksums={MNIST_FILES[0]: "abc"})


def test_known_table_is_well_formed() -> None:
    for remote in KNOWN.values():
        assert all(m.endswith("/") for m in remote.mirrors)  # URLs are mirror + file name
        assert all(len(d) in (32, 64) for d in remote.files.values())  # md5 or sha256
