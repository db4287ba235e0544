"""`champion data clear` removes only what champion wrote, under a folder champion marked as its cache."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from champion import files

SMALL = ["--set", "data.validation_split=0.25", "--quiet"]


def user_files(folder: Path) -> None:
    """Things a user keeps in a folder: they must survive every clear."""
    (folder / "precious").mkdir(parents=True, exist_ok=True)
    (folder / "precious" / "thesis.tex").write_text("years of work")
    (folder / "notes.md").write_text("my notes")


def survived(folder: Path) -> bool:
    return (folder / "precious" / "thesis.tex").read_text() == "years of work" and (folder / "notes.md").is_file()


def prepared_cache(cli, cache: Path) -> str:
    out = cli("data", "prepare", "--set", f"data.cache_dir={cache}", *SMALL)
    assert out.exit_code == 0, out.stderr
    return out.values["DATA_DIGEST"]


def test_clearing_the_working_directory_deletes_nothing(workdir: Path, cli) -> None:
    user_files(workdir)
    for extra in ([], ["--yes"]):
        out = cli("data", "clear", "--set", "data.cache_dir=.", *extra)
        assert out.exit_code == 2, out.stdout + out.stderr
        assert "working directory" in out.stderr and "not a champion cache" in out.stderr
        assert survived(workdir)


def test_home_and_filesystem_root_are_refused(workdir: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    home = workdir / "home"
    user_files(home)
    monkeypatch.setenv("HOME", str(home))
    for where in ("~/", str(home), "/"):  # ("~" alone is YAML for null)
        out = cli("data", "clear", "--yes", "--set", f"data.cache_dir={where}")
        assert out.exit_code == 2, (where, out.stdout, out.stderr)
        assert "refusing to clear" in out.stderr
    assert survived(home)


def test_unmarked_folder_of_user_files_is_neither_cleared_nor_used(workdir: Path, cli) -> None:
    folder = workdir / "project"
    user_files(folder)
    cleared = cli("data", "clear", "--yes", "--set", f"data.cache_dir={folder}")
    assert cleared.exit_code == 2 and "not a champion cache" in cleared.stderr
    prepared = cli("data", "prepare", "--set", f"data.cache_dir={folder}", *SMALL)
    assert prepared.exit_code == 2 and "choose a new or empty folder" in prepared.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.md", "precious"]  # not even a marker


def test_markerless_old_cache_is_adopted_and_only_its_entries_go(workdir: Path, cli) -> None:
    cache = workdir / "cache"
    digest = prepared_cache(cli, cache)
    (cache / files.MARKER).unlink()  # now exactly what earlier versions wrote
    (cache / "stray.txt").write_text("a user's file that happens to be here")

    again = cli("data", "prepare", "--set", f"data.cache_dir={cache}", *SMALL)
    assert again.exit_code == 0 and again.values["DATA_DIGEST"] == digest
    assert (cache / digest / "manifest.json").is_file()  # reused, not rebuilt elsewhere
    assert json.loads((cache / files.MARKER).read_text())["kind"] == "data-cache"

    (cache / files.MARKER).unlink()  # adoption by `clear` itself, too
    cleared = cli("data", "clear", "--yes", "--set", f"data.cache_dir={cache}")
    assert cleared.exit_code == 0, cleared.stderr
    assert not (cache / digest).exists() and not (cache / ".file-hashes.json").exists()
    assert (cache / "stray.txt").read_text() == "a user's file that happens to be here"
    assert (cache / files.MARKER).is_file()


def test_clear_all_removes_what_champion_wrote_and_nothing_else(workdir: Path, cli) -> None:
    cache = workdir / "cache"
    digest = prepared_cache(cli, cache)
    user_files(cache)
    mirror = cache / "s3" / "bucket" / "prefix"
    (mirror / "cats").mkdir(parents=True)
    (mirror / "cats" / "a.png").write_bytes(b"png")
    state = {"version": 1, "uri": "s3://bucket/prefix", "files": {"cats/a.png": {"size": 3, "etag": "e"}}}
    (mirror / ".champion-sync.json").write_text(json.dumps(state))
    other = cache / "s3" / "bucket" / "other"  # a mirror that holds a file its sync never fetched
    (other / "dogs").mkdir(parents=True)
    (other / "dogs" / "b.png").write_bytes(b"png")
    (other / "dogs" / "mine.txt").write_text("kept")
    (other / ".champion-sync.json").write_text(json.dumps({**state, "files": {"dogs/b.png": {"size": 3, "etag": "e"}}}))
    (cache / "s3" / "mine").mkdir()  # no sync state: not a mirror champion made
    (cache / "downloads" / "mnist").mkdir(parents=True)
    (cache / "downloads" / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"idx")
    (cache / "downloads" / "mine.txt").write_text("kept")
    (cache / ".tmp-0123456789abcdef-abc").mkdir()  # an entry being written when a process died
    (cache / ".tmp-mynotes").write_text("kept")  # a user's file that only looks temporary
    fake = cache / "0000000000000000"
    fake.mkdir()
    (fake / "manifest.json").write_text("{}")  # a manifest without champion's keys is not an entry

    out = cli("data", "clear", "-y", "--set", f"data.cache_dir={cache}")

    assert out.exit_code == 0, out.stderr
    assert not (cache / digest).exists() and not (cache / ".tmp-0123456789abcdef-abc").exists()
    assert (cache / ".tmp-mynotes").read_text() == "kept"
    assert not mirror.exists() and (cache / "s3" / "mine").is_dir()
    assert sorted(p.name for p in other.rglob("*")) == ["dogs", "mine.txt"]
    assert not (cache / "downloads" / "mnist").exists() and (cache / "downloads" / "mine.txt").is_file()
    assert survived(cache) and fake.is_dir()


def test_clearing_everything_without_a_terminal_needs_yes(workdir: Path, cli) -> None:
    cache = workdir / "cache"
    digest = prepared_cache(cli, cache)
    out = cli("data", "clear", "--set", f"data.cache_dir={cache}")  # CliRunner's stdin is not a terminal
    assert out.exit_code == 2 and "--yes" in out.stderr
    assert (cache / digest / "manifest.json").is_file()
    one = cli("data", "clear", digest, "--set", f"data.cache_dir={cache}")  # one entry: no question asked
    assert one.exit_code == 0 and not (cache / digest).exists()


@pytest.mark.slow
def test_terminal_confirmation(workdir: Path, cli) -> None:
    cache = workdir / "cache"
    digest = prepared_cache(cli, cache)
    exe = Path(sys.executable).with_name("champion")

    def answer(reply: bytes) -> tuple[int, str]:
        main, secondary = pty.openpty()
        proc = subprocess.Popen([str(exe), "data", "clear", "--set", f"data.cache_dir={cache}"],
                                stdin=secondary, stdout=subprocess.PIPE, stderr=secondary, env=dict(os.environ))  # fmt: skip
        os.close(secondary)
        seen = b""
        deadline = time.monotonic() + 120
        while b"[y/N]" not in seen and time.monotonic() < deadline:
            seen += os.read(main, 1024)
        os.write(main, reply + b"\n")
        out, _ = proc.communicate(timeout=120)
        os.close(main)
        return proc.returncode, out.decode()

    code, out = answer(b"n")
    assert code == 0 and "REMOVED=nothing" in out and (cache / digest).is_dir()
    code, out = answer(b"y")
    assert code == 0 and digest in out and not (cache / digest).exists()


def test_a_refused_clear_deletes_nothing_at_all(workdir: Path, cli) -> None:
    """A mirror folder that is a link to the user's files makes the whole clear refuse, before any deletion."""
    cache = workdir / "cache"
    digest = prepared_cache(cli, cache)
    theirs = workdir / "theirs"
    (theirs / "bucket").mkdir(parents=True)
    (theirs / "bucket" / ".champion-sync.json").write_text("{}")
    (theirs / "bucket" / "photo.jpg").write_bytes(b"jpg")
    (cache / "s3").symlink_to(theirs, target_is_directory=True)
    out = cli("data", "clear", "--yes", "--set", f"data.cache_dir={cache}")
    assert out.exit_code == 2 and "not inside" in out.stderr
    assert (cache / digest / "manifest.json").is_file()
    assert sorted(p.name for p in (theirs / "bucket").iterdir()) == [".champion-sync.json", "photo.jpg"]


def test_an_unconfirmed_clear_adopts_nothing(workdir: Path, cli) -> None:
    cache = workdir / "cache"
    prepared_cache(cli, cache)
    (cache / files.MARKER).unlink()  # a cache from before markers
    out = cli("data", "clear", "--set", f"data.cache_dir={cache}")  # no terminal, no --yes: refused
    assert out.exit_code == 2
    assert not (cache / files.MARKER).exists()  # a refused command leaves the folder exactly as it was
