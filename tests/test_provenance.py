"""Gate 1 sees honest numbers: a run resumes only on the data it started on, an export-only
checkpoint is evaluated only on a split it never trained on, and checkpoints go into folders that
are the run's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import image_folder

pytestmark = pytest.mark.slow

TINY = ["--quiet", "--epochs", "1", "--set", "data.validation_split=0.25", "--set", "data.channels=3",
        "--set", "training.batch_size=8", "--set", "data.image_size=[16,16]"]  # fmt: skip


@pytest.fixture
def tiny(workdir: Path) -> Path:
    """24 RGB images, 3 classes whose mean brightness differs."""
    return image_folder(workdir / "tiny")


def _unfinished_run(cli, tiny: Path) -> str:
    """A one-epoch run with its last.ckpt, marked KILLED as SIGTERM leaves it."""
    import mlflow

    result = cli("train", *TINY, "--set", f"data.source={tiny}")
    assert result.exit_code == 0, result.stderr
    run_id = result.values["RUN_ID"]
    mlflow.MlflowClient().set_terminated(run_id, "KILLED")
    return run_id


def _change_an_image(tiny: Path) -> None:
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(tiny / "dark" / "0.png")


def _runs() -> list:
    import mlflow

    return mlflow.search_runs(experiment_names=["champion"], output_format="list")


def test_resume_refuses_data_that_changed_since_the_run_started(tiny: Path, workdir: Path, cli) -> None:
    import mlflow

    run_id = _unfinished_run(cli, tiny)
    c = mlflow.MlflowClient()
    started = c.get_run(run_id).data.tags["data.digest"]
    before = {k: len(c.get_metric_history(run_id, k)) for k in c.get_run(run_id).data.metrics}
    _change_an_image(tiny)

    result = cli("train", "--resume", "--run-id", run_id, "--quiet")
    assert result.exit_code == 1
    assert started in result.stderr and "changed since the run started" in result.stderr
    now = result.stderr.split("has digest ")[1].split(":")[0]
    assert now != started and len(now) == len(started)
    run = c.get_run(run_id)
    assert run.info.status == "KILLED"  # not reopened
    assert {k: len(c.get_metric_history(run_id, k)) for k in run.data.metrics} == before  # nothing new logged


def test_library_resume_finds_the_unfinished_run_and_finishes_it(tiny: Path, workdir: Path, cli) -> None:
    import mlflow

    from champion.train import run as train

    run_id = _unfinished_run(cli, tiny)
    result = train.resume(experiment="champion", model_name="digits-cnn", quiet=True)
    assert result is not None and result.run_id == run_id
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert len(_runs()) == 1
    with pytest.raises(Exception, match="finished; there is nothing to resume"):
        train.resume(run_id, quiet=True)


def test_checkpoints_record_their_data_and_export_only_accepts_the_same_data(tiny: Path, workdir: Path, cli) -> None:
    import mlflow

    result = cli("train", *TINY, "--set", f"data.source={tiny}")
    assert result.exit_code == 0, result.stderr
    run_id = result.values["RUN_ID"]
    digest = mlflow.MlflowClient().get_run(run_id).data.tags["data.digest"]
    folder = workdir / "checkpoints" / run_id
    for ckpt in folder.glob("*.ckpt"):
        record = torch.load(ckpt, map_location="cpu", weights_only=True)["champion"]
        assert record["data_digest"] == digest and record["run_id"] == run_id
        assert record["validation_split"] == 0.25 and record["seed"] == 42

    best = next(folder.glob("best-*.ckpt"))
    again = cli("train", *TINY, "--set", f"data.source={tiny}", "--export-only", "--checkpoint", str(best))
    assert again.exit_code == 0, again.stderr
    tags = mlflow.MlflowClient().get_run(again.values["RUN_ID"]).data.tags
    assert tags["export_only"] == "true" and tags["checkpoint.data_digest"] == digest
    assert tags["checkpoint.run_id"] == run_id


def test_export_only_refuses_a_checkpoint_that_may_have_trained_on_the_split(tiny: Path, workdir: Path, cli) -> None:
    result = cli("train", *TINY, "--set", f"data.source={tiny}")
    assert result.exit_code == 0, result.stderr
    best = next((workdir / "checkpoints" / result.values["RUN_ID"]).glob("best-*.ckpt"))
    export_only = ("train", "--export-only", "--checkpoint")

    # Another split of the same images: some of the new validation images were training images.
    resplit = cli(*export_only, str(best), *TINY, "--set", f"data.source={tiny}", "--set", "data.validation_split=0.3")
    assert resplit.exit_code == 1 and "validation_split 0.25" in resplit.stderr and "may hold images" in resplit.stderr

    # A checkpoint that does not say what it trained on (not written by champion, or by older code).
    state = torch.load(best, map_location="cpu", weights_only=True)
    del state["champion"]
    foreign = workdir / "foreign.ckpt"
    torch.save(state, foreign)
    unknown = cli(*export_only, str(foreign), *TINY, "--set", f"data.source={tiny}")
    assert unknown.exit_code == 1 and "does not record which data it trained on" in unknown.stderr

    _change_an_image(tiny)
    changed = cli(*export_only, str(best), *TINY, "--set", f"data.source={tiny}")
    assert changed.exit_code == 1 and "may hold images" in changed.stderr
    assert len(_runs()) == 1  # no run was started for any refusal


def test_checkpoint_folder_is_the_runs_own(tiny: Path, workdir: Path, cli) -> None:
    import json

    run_id = _unfinished_run(cli, tiny)
    folder = workdir / "checkpoints" / run_id
    assert run_id in json.loads((folder / ".champion").read_text())["kind"]

    # Unmarked, with a file champion did not write: not the run's folder, so nothing is written there.
    (folder / ".champion").unlink()
    (folder / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    refused = cli("train", "--resume", "--run-id", run_id, "--quiet")
    assert refused.exit_code == 1 and "did not create" in refused.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before

    # Only champion's own checkpoint names (a folder from before markers existed): adopted and resumed.
    (folder / "notes.txt").unlink()
    resumed = cli("train", "--resume", "--run-id", run_id, "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert (folder / ".champion").is_file()
