"""Work beside the imports: `champion.forked` and the first run in a new store that uses it.

A first `champion run` in a new local store has nothing to reuse, so it prepares the data and
creates the store in a forked child while it imports torch and Lightning. The child only builds: the
run opens what it built, and when the child fails the run does the work itself and meets the error
as it would have without the child (said once, by the command).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from champion import timings
from champion.forked import Forked

CHAMPION = Path(sys.executable).with_name("champion")


def test_a_child_that_finishes_reports_its_stages_as_beside(tmp_path: Path) -> None:
    timings.reset()
    target = tmp_path / "built"

    def work() -> None:
        with timings.stage("build"):
            target.write_text("done")

    child = Forked(work)
    assert child.join() is True and target.read_text() == "done"
    [built] = [s for s in timings.stages() if s["stage"].startswith("build")]
    assert built["beside"] is True and built["stage"] == "build (beside, in a child process)"
    child.stop()  # after a join: nothing to stop, and no error


def test_a_child_that_fails_says_only_that_it_did_not_finish(capfd: pytest.CaptureFixture[str]) -> None:
    timings.reset()

    def work() -> None:
        with timings.stage("doomed"):
            raise RuntimeError("broken in the child")

    assert Forked(work).join() is False
    assert not timings.stages()  # a failed child's stages are not taken for work done
    assert "broken in the child" not in capfd.readouterr().err  # the caller meets the error, not the child


def test_stop_kills_a_child_still_working() -> None:
    child = Forked(lambda: time.sleep(60))
    pid = child.pid
    started = time.monotonic()
    child.stop()
    assert time.monotonic() - started < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left behind
    assert child.join() is False


def _run(folder: Path, *sets: str, after_torch: bool = False) -> subprocess.CompletedProcess[str]:
    """`champion run` on digits (resized with torch) in `folder`; `after_torch`: from a Python process
    that has used torch's OpenMP threads already, as a notebook would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAMPION_", "MLFLOW_"))}
    env |= {"XDG_CACHE_HOME": str(folder / "cache"), timings.ENV: str(folder / "timings.json")}
    args = ["run", "--set", "data.source=digits", "--set", "data.image_size=[12,12]", "--set", "training.epochs=1"]
    args += [x for s in sets for x in ("--set", s)]
    cmd = [str(CHAMPION), *args]
    if after_torch:
        warm = "import torch; torch.nn.functional.interpolate(torch.ones(4, 1, 64, 64), size=(8, 8), mode='bilinear', antialias=True)"
        cmd = [sys.executable, "-c", f"{warm}; import sys; from champion.cli import main; sys.argv = ['champion', *{args!r}]; main()"]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_first_run_in_a_new_store_builds_its_data_and_store_beside_the_imports(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode in (0, 3), done.stderr  # whether one epoch passes the bar does not matter here
    stages = json.loads((tmp_path / "timings.json").read_text())["stages"]
    beside = {s["stage"] for s in stages if s.get("beside")}
    assert beside == {"ingest (beside, in a child process)", "create the tracking store (beside, in a child process)"}
    imports = next(s for s in stages if s["stage"] == "import training")
    assert [s["stage"] for s in stages].count("import training") == 1  # not again, empty, before training
    child_ingest = next(s for s in stages if s["stage"].startswith("ingest (beside"))
    # The child worked while this process imported: their spans overlap.
    assert child_ingest["start"] < imports["end"] and imports["start"] < child_ingest["end"]
    # Said once each, though two processes saw the new store and the missing training.
    assert done.stderr.count("(created now: there was no such file") == 1, done.stderr
    assert done.stderr.index("tracking store: ") < done.stderr.index("not reusing"), done.stderr  # the store, then why
    not_reusing = [line for line in done.stderr.splitlines() if line.startswith("not reusing")]
    assert not_reusing == [
        "not reusing an earlier training: no identical finished training in experiment 'champion': "
        "the tracking store is new; training."
    ]
    assert "RUN_ID=" in done.stdout and (tmp_path / "mlflow.db").is_file()


@pytest.mark.slow
def test_when_the_child_cannot_prepare_the_data_the_run_meets_the_error_itself(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    done = _run(tmp_path, f"data.source={missing}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count(str(missing)) == 1, done.stderr  # said once, by the command, not by the child
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_process_that_used_torch_already_prepares_the_data_itself(tmp_path: Path) -> None:
    # A child forked after torch started its OpenMP threads would wait at their barrier forever when
    # it resizes with torch (digits is resized here): such a process does not fork.
    done = _run(tmp_path, after_torch=True)
    assert done.returncode in (0, 3), done.stderr
    stages = json.loads((tmp_path / "timings.json").read_text())["stages"]
    assert not [s for s in stages if s.get("beside")] and "ingest" in {s["stage"] for s in stages}
    assert "the tracking store is new; training." in done.stderr
