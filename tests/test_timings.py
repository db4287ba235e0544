"""Stage timings (CHAMPION_TIMINGS): written as JSON when asked, and never at the cost of the command's own result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from champion import timings


def test_the_stages_are_written_where_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "timings.json"
    monkeypatch.setenv(timings.ENV, str(target))
    with timings.stage("a test stage"):
        pass
    assert timings.write_if_asked() == target
    report = json.loads(target.read_text())
    mine = [s for s in report["stages"] if s["stage"] == "a test stage"]
    assert len(mine) == 1 and mine[0]["end"] >= mine[0]["start"] and report["process_cpu"] > 0


def test_a_file_that_cannot_be_written_is_a_warning_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(timings.ENV, str(tmp_path))  # a folder: no file can be written there under that name
    assert timings.write_if_asked() is None
    assert f"could not write the stage timings to {timings.ENV}={tmp_path}" in capsys.readouterr().err


def test_each_run_writes_only_its_own_stages() -> None:
    with timings.stage("an earlier command's"):
        pass
    timings.reset()
    with timings.stage("this command's"):
        pass
    assert [s["stage"] for s in timings.stages()] == ["this command's"]
