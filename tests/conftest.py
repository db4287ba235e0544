"""Shared fixtures: every test works in its own folder, with its own MLflow store and data cache."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

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


@dataclass(frozen=True)
class Shipped:
    """A model taken through the pipeline in a module's store: what deploy, serve, rollback... tests start from."""

    name: str
    root: Path  # the store's working folder: mlflow.db, the data cache, checkpoints
    values: dict[str, str]  # every KEY=value the commands printed

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"  # module_workdir leaves champion its default store

    @property
    def run_id(self) -> str:
        return self.values["RUN_ID"]

    @property
    def model_version(self) -> str:
        return self.values["MODEL_VERSION"]

    @property
    def export_run_id(self) -> str:
        return self.values["EXPORT_RUN_ID"]

    @property
    def onnx_version(self) -> str:
        return self.values["ONNX_MODEL_VERSION"]


@dataclass
class ShipModel:
    """`shipped_model(name, *overrides, ...)`: a store where `name` went through the pipeline on digits."""

    tmp_path_factory: pytest.TempPathFactory
    stores: contextlib.ExitStack  # the stores it made, kept until the module ends

    def __call__(
        self, name: str, *overrides: str, epochs: int = 1, through: Literal["validate", "promote"] = "validate",
        store: Path | None = None, output_files: Path | None = None,
    ) -> Shipped:  # fmt: skip
        """Train `name` for `epochs` with `--set` `overrides`, then take it through the gates.

        Args:
            through: "validate": `champion run` (train, Gate 1, export, Gate 2, card); "promote":
                `train` and `promote` only, for tests that export and validate themselves.
            store: run in this folder, already the working folder of a `module_workdir` (one the
                module prepared, or one its tests also use without the model); None: a new one.
            output_files: `--output-files` of `champion run`.
        """
        if store is None:
            store = self.stores.enter_context(module_workdir(self.tmp_path_factory, name))
        assert Path.cwd() == store.resolve(), f"{store} is not the working folder: make it with module_workdir"
        sets = [arg for value in (f"model.name={name}", *overrides) for arg in ("--set", value)]
        common = ["--quiet", "--epochs", str(epochs), *sets]
        if through == "validate":
            result = invoke("run", *common, *(["--output-files", str(output_files)] if output_files else []))
            assert result.exit_code == 0, result.stderr
            return Shipped(name, store, result.values)
        assert output_files is None, "--output-files is an option of `champion run`"
        trained = invoke("train", *common)
        assert trained.exit_code == 0, trained.stderr
        promoted = invoke("promote", "--run-id", trained.values["RUN_ID"], "--quiet")
        assert promoted.exit_code == 0, promoted.stdout + promoted.stderr
        return Shipped(name, store, {**trained.values, **promoted.values})


@pytest.fixture(scope="module")
def shipped_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShipModel]:
    """The one way a module gets a model already through the pipeline, to deploy, serve or roll back.

    Module-scoped, as are the stores it makes: training is the expensive part, so a module trains
    once (from a module-scoped fixture) and its tests build on the result.
    """
    with contextlib.ExitStack() as stores:
        yield ShipModel(tmp_path_factory, stores)


def requires_shared_mnist():
    return pytest.mark.skipif(
        not (SHARED_MNIST / "train-labels-idx1-ubyte.gz").is_file(),
        reason=f"needs the MNIST IDX files in {SHARED_MNIST} (../shared beside the checkout)",
    )


# Fast settings for end-to-end runs on the digits data set: same code path, fewer epochs.
FAST = ["--set", "training.epochs=3", "--quiet"]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
