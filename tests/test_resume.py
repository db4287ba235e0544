"""Stopping and resuming: SIGTERM marks the run KILLED, a resumed run continues the same MLflow run,
and a run killed with SIGKILL and resumed ends exactly like an uninterrupted one (deterministic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Enough epochs that the process is still training when the signal arrives.
LONG = ["--set", "training.epochs=6", "--set", "training.early_stopping.patience=100", "--quiet"]


def champion(*args: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("champion")
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(cwd: Path, epochs_done: int, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """Poll until `last.ckpt` exists and the run has logged `epochs_done` epochs."""
    import mlflow

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        ckpts = list(cwd.glob("checkpoints/*/last.ckpt"))
        if ckpts:
            run_id = ckpts[0].parent.name
            mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
            if len(mlflow.MlflowClient().get_metric_history(run_id, "val_accuracy")) >= epochs_done:
                return ckpts[0]
        time.sleep(0.02)
    raise AssertionError("training never reached the checkpoint")


def history(cwd: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    return sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key))


def test_sigterm_marks_killed_and_resume_continues_the_same_run(tmp_path: Path) -> None:
    import mlflow

    proc = champion("train", *LONG, cwd=tmp_path)
    ckpt = wait_for_checkpoint(tmp_path, 2, proc)
    run_id = ckpt.parent.name
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "KILLED" in err and "--resume" in err
    c = mlflow.MlflowClient()
    assert c.get_run(run_id).info.status == "KILLED"
    assert ckpt.is_file()

    resumed = champion("train", "--resume", "--quiet", cwd=tmp_path)  # finds the latest unfinished run itself
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"RUN_ID={run_id}" in out  # the same run, not a second one
    assert c.get_run(run_id).info.status == "FINISHED"
    steps = [s for s, _ in history(tmp_path, run_id, "val_accuracy")]
    assert steps == list(range(6))  # every epoch once: no gap, no duplicate
    assert len(mlflow.search_runs(experiment_names=["champion"], output_format="list")) == 1


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    import random

    reference_dir, killed_dir = tmp_path / "a", tmp_path / "b"
    reference_dir.mkdir()
    killed_dir.mkdir()
    ref = champion("train", *LONG, cwd=reference_dir)
    ref_out, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err
    ref_id = ref_out.split("RUN_ID=")[1].split()[0]

    proc = champion("train", *LONG, cwd=killed_dir)
    rng = random.Random(int(os.environ.get("CHAMPION_TEST_SEED", "0")))  # seeded: a failure can be replayed
    ckpt = wait_for_checkpoint(killed_dir, rng.randint(1, 4), proc)
    time.sleep(rng.random() * 0.3)  # somewhere inside the next epoch
    proc.kill()
    proc.communicate()
    run_id = ckpt.parent.name
    resumed = champion("train", "--resume", "--run-id", run_id, "--quiet", cwd=killed_dir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    for key in ("val_accuracy", "val_loss", "train_loss", "best_val_accuracy"):
        assert history(killed_dir, run_id, key) == history(reference_dir, ref_id, key), key


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    proc = champion("train", "--resume", "--quiet", cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "no unfinished run" in err


def test_ddp_two_processes_train_once_and_log_once(tmp_path: Path) -> None:
    import mlflow

    proc = champion("train", "--quiet", "--epochs", "2", "--set", "training.devices=2", "--set", "training.strategy=ddp", cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.count("RUN_ID=") == 1  # only rank 0 reports
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["champion"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [s for s, _ in history(tmp_path, runs[0].info.run_id, "val_accuracy")] == [0, 1]
    assert len(list(tmp_path.glob("checkpoints/*/last.ckpt"))) == 1  # rank 0 saved, into the run's folder
    assert "model_uri" in runs[0].data.tags
