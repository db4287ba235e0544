"""A full disk wherever champion writes: one `error:` line naming the folder and what could not be
written, exit 1, the training run FAILED, and no file under its final name that is not whole.

The disks are real: small tmpfs mounts (root, or CAP_SYS_ADMIN, is needed to mount them; the tests
skip without it), unmounted when each test ends.
"""

from __future__ import annotations

import errno
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CliResult, Shipped, ShipModel, invoke

NAME = "fd-cnn"
# MLflow's own log lines (creating the SQLite tables, a new experiment): not champion's output.
MLFLOW_LOG = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING) ")


class Disks:
    """Small tmpfs file systems under a test's folder: `mount(size)`, `resize(disk, size)`."""

    def __init__(self, root: Path):
        self.root = root
        self.mounted: list[Path] = []

    def mount(self, size: str, name: str = "disk") -> Path:
        where = self.root / name
        where.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no `mount` command here: a full disk is simulated with a small tmpfs")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill ({done.stderr.strip()}); run as root or with CAP_SYS_ADMIN")
        self.mounted.append(where)
        return where

    def resize(self, disk: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True, capture_output=True)

    def unmount_all(self) -> None:
        for where in reversed(self.mounted):
            subprocess.run(["umount", str(where)], check=True, capture_output=True)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Disks]:
    made = Disks(tmp_path)
    yield made
    made.unmount_all()


@pytest.fixture(scope="module")
def shipped(shipped_model: ShipModel) -> Shipped:
    """`champion run` for 1 epoch on digits: fd-cnn @champion, fd-cnn-onnx @deploy."""
    return shipped_model(NAME, "export.num_samples=20")


def error_line(result: CliResult) -> str:
    """The one line a full disk prints: exit 1, no traceback, nothing else of champion's on stderr but
    the line a training prints, even with --quiet, on why it did not reuse an earlier one."""
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not MLFLOW_LOG.match(line) and not line.startswith("not reusing an earlier training: ")]  # fmt: skip
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device in "), result.stderr
    return lines[0]


def leftovers(disk: Path) -> list[Path]:
    return sorted(p for p in disk.rglob("*") if p.name.startswith(".tmp-"))


@pytest.mark.slow
def test_run_with_checkpoints_on_a_full_disk(workdir: Path, disks: Disks) -> None:
    import mlflow
    import torch

    disk = disks.mount("64k")  # the run's folder and its marker fit; no checkpoint does
    out = invoke("run", "--quiet", "--epochs", "1", "--set", f"training.checkpoint.dirpath={disk}")
    line = error_line(out)
    (run_dir,) = [p for p in disk.iterdir() if p.is_dir()]
    assert f"in {run_dir}: could not write checkpoint best-epoch=0.ckpt" in line, line
    # Nothing under a final name that --resume or --checkpoint would read and find cut short.
    for ckpt in disk.rglob("*.ckpt"):
        torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not leftovers(disk)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    assert mlflow.MlflowClient().get_run(run_dir.name).info.status == "FAILED"


def test_data_prepare_on_a_full_disk(workdir: Path, disks: Disks) -> None:
    disk = disks.mount("100k")  # the cache's marker fits; the digits arrays (1.4 MB) do not
    prepare = ("data", "prepare", "--quiet", "--set", f"data.cache_dir={disk}")
    line = error_line(invoke(*prepare))
    assert re.fullmatch(rf"error: no space left on device in {re.escape(str(disk))}: could not write data cache entry \w+; .*", line), line
    assert sorted(p.name for p in disk.iterdir()) == [".champion"]  # no entry, whole or not, and no temporary folder
    # A second run does not take anything the first one left for a complete entry: it fails the same way.
    assert error_line(invoke(*prepare)) == line
    disks.resize(disk, "8m")
    done = invoke(*prepare)
    assert done.exit_code == 0, done.stderr
    assert done.values["DATA_DIGEST"] in line


def test_output_files_on_a_full_disk(workdir: Path, disks: Disks) -> None:
    disk = disks.mount("4k")  # one page: the folder's marker, and no room for a KEY file
    out = invoke("data", "prepare", "--quiet", "--output-files", str(disk / "out"))
    line = error_line(out)
    assert f"in {disk / 'out'}: could not write DATA_DIGEST" in line, line
    assert not leftovers(disk)


def test_a_full_disk_is_one_message_whatever_the_errno() -> None:
    """ENOSPC and EDQUOT (a spent quota), raised by champion's writers or by anyone's, name the folder."""
    from champion.files import no_room

    quota = no_room(OSError(errno.EDQUOT, "Disk quota exceeded", "/data/cache/images.npy"))
    assert str(quota).startswith("disk quota exceeded in /data/cache: could not write images.npy")
    assert no_room(OSError(errno.EACCES, "Permission denied", "/x")) is None
    wrapped = RuntimeError("writer failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert no_room(wrapped, Path("/ckpt"), "checkpoint last.ckpt") is not None


def test_replacing_names_the_folder_and_leaves_the_old_file(tmp_path: Path) -> None:
    from champion.errors import DiskFullError
    from champion.files import replacing

    path = tmp_path / "RESULT"
    path.write_text("passed")
    with pytest.raises(DiskFullError, match=rf"disk quota exceeded in {re.escape(str(tmp_path))}: could not write RESULT"):
        with replacing(path) as tmp:
            tmp.write_text("fai")
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert path.read_text() == "passed" and not leftovers(tmp_path)


@pytest.mark.slow
def test_model_card_on_a_full_disk(shipped: Shipped, disks: Disks) -> None:
    disk = disks.mount("12k")  # the card folder's marker fits; its first plot does not
    out = invoke("card", "--run-id", shipped.run_id, "--output-dir", str(disk))
    line = error_line(out)
    plots = disk / NAME / "runs" / shipped.run_id / "plots"
    assert f"in {plots}: could not write confusion_matrix.png" in line, line
    assert not list(plots.iterdir())  # no plot cut short under its name, no temporary file
    assert not (plots.parent / "model_card.md").exists()


@pytest.mark.slow
def test_triton_repository_on_a_full_disk(shipped: Shipped, disks: Disks) -> None:
    disk = disks.mount("8k")  # the model folder's marker fits; the ONNX file does not
    out = invoke("deploy", "triton", "--model-name", NAME, "--repository", str(disk), "--quiet")
    line = error_line(out)
    assert f"in {disk / NAME}: could not write model version {shipped.onnx_version}" in line, line
    assert not (disk / NAME / shipped.onnx_version).exists()  # a version folder appears only whole
    assert not (disk / NAME / "config.pbtxt").exists()  # so Triton never loads a model without its file
    assert not leftovers(disk)
