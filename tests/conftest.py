"""Shared fixtures: every test works in its own folder, with its own MLflow store and data cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: the default sqlite:///mlflow.db and the cache both land inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield tmp_path
    import mlflow

    while mlflow.active_run():  # a failed test must not leave a run open for the next one
        mlflow.end_run("FAILED")


@dataclass
class CliResult:
    exit_code: int
    values: dict[str, str]
    stdout: str
    stderr: str


def invoke(*args: str) -> CliResult:
    """Run the real CLI in-process (the heavy imports are paid once per test session)."""
    from typer.testing import CliRunner

    from champion.cli import app

    result = CliRunner().invoke(app, list(args))
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line and line.split("=")[0].isupper())
    return CliResult(result.exit_code, values, result.stdout, result.stderr)


@pytest.fixture
def cli():
    return invoke


def requires_shared_mnist():
    return pytest.mark.skipif(
        not (SHARED_MNIST / "train-labels-idx1-ubyte.gz").is_file(),
        reason=f"needs the MNIST IDX files in {SHARED_MNIST} (../shared beside the checkout)",
    )


# Fast settings for end-to-end runs on the digits data set: same code path, fewer epochs.
FAST = ["--set", "training.epochs=3", "--quiet"]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
