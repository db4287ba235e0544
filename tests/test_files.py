"""champion.files: atomic writes and folder ownership, on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from champion import files
from champion.errors import ConfigError


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    files.atomic_write(target, "one")
    files.atomic_write(target, b"two")
    assert target.read_bytes() == b"two" and names(target.parent) == ["state.json"]


def test_failed_replacement_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.replacing(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("killed mid-way")
    assert target.read_bytes() == b"old" and names(tmp_path) == ["model.bin"]


def test_staging_dir_publishes_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError), files.staging_dir(final) as tmp:
        (tmp / "a").write_text("partial")
        raise RuntimeError
    assert names(tmp_path) == []
    with files.staging_dir(final) as tmp:
        (tmp / "a").write_text("whole")
    with files.staging_dir(final) as tmp:  # a second writer of the same thing: the first copy stays
        (tmp / "a").write_text("second")
    assert (final / "a").read_text() == "whole" and names(tmp_path) == ["entry"]


def test_claim_marks_new_folders_and_refuses_others(tmp_path: Path) -> None:
    assert files.claim(tmp_path / "ckpt", "checkpoints") == tmp_path / "ckpt"
    assert files.is_owned(tmp_path / "ckpt", "checkpoints") and not files.is_owned(tmp_path / "ckpt", "data-cache")
    files.claim(tmp_path / "ckpt", "checkpoints")  # idempotent
    with pytest.raises(ConfigError, match="not a data-cache folder"):
        files.claim(tmp_path / "ckpt", "data-cache")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("x")
    with pytest.raises(ConfigError, match="did not create"):
        files.claim(tmp_path / "mine", "checkpoints")
    assert names(tmp_path / "mine") == ["notes.md"]
    files.claim(tmp_path / "mine", "checkpoints", adopt=lambda folder: (folder / "notes.md").is_file())
    assert files.is_owned(tmp_path / "mine")


def test_remove_owned_refuses_outside_and_unowned(tmp_path: Path) -> None:
    owned = files.claim(tmp_path / "owned", "outputs")
    (owned / "run1").mkdir()
    (tmp_path / "other").mkdir()
    (owned / "link").symlink_to(tmp_path / "other")
    files.remove_owned(owned / "link", owned)  # the link goes, never what it points at
    assert (tmp_path / "other").is_dir() and not (owned / "link").exists()
    for path, root in [(tmp_path / "other", owned), (owned / ".." / "other", owned), (owned, owned),
                       (owned / files.MARKER, owned), (tmp_path / "other", tmp_path)]:  # fmt: skip
        with pytest.raises(ConfigError, match="refusing"):
            files.remove_owned(path, root)
    files.remove_owned(owned / "run1", owned)
    assert names(owned) == [files.MARKER] and (tmp_path / "other").is_dir()


def test_published_files_and_folders_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        files.atomic_write(tmp_path / "RUN_ID", "abc")  # read by an orchestrator's sidecar as another user
        with files.staging_dir(tmp_path / "entry") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "RUN_ID").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "entry").stat().st_mode) == 0o755

