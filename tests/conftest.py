"""Shared fixtures: every test works in its own folder, with its own MLflow store and data cache."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: the default sqlite:///mlflow.db and the cache both land inside it."""
    monkeypatch.chdir(tmp_path)
    _isolate(monkeypatch, tmp_path)
    yield tmp_path
    import mlflow

    while mlflow.active_run():  # a failed test must not leave a run open for the next one
        mlflow.end_run("FAILED")


def _isolate(mp: pytest.MonkeyPatch, root: Path) -> None:
    """The default SQLite store and the cache inside `root`; no setting of the user's leaks in."""
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key in [k for k in os.environ if k.startswith("CHAMPION_")]:
        mp.delenv(key)
    mp.setenv("XDG_CACHE_HOME", str(root / "cache"))


@contextlib.contextmanager
def module_workdir(tmp_path_factory: pytest.TempPathFactory, name: str, **env: str) -> Iterator[Path]:
    """`workdir` for a module-scoped fixture: one store that several tests build on, in its own folder."""
    root = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        _isolate(mp, root)
        for key, value in env.items():
            mp.setenv(key, value)
        yield root


def image_folder(root: Path, classes: tuple[str, ...] = ("dark", "mid", "bright"), size: int = 16, per_class: int = 8) -> Path:
    """RGB PNGs in one sub-folder per class, whose mean brightness differs: learnable in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(rng.normal(40 + 80 * c, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


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
