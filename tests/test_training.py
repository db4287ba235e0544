"""Real training on tiny data: every architecture, every optimiser, scheduler and loss, and failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import image_folder

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny(workdir: Path) -> Path:
    """24 RGB images, 3 classes whose mean brightness differs: learnable in a few steps."""
    return image_folder(workdir / "tiny", size=32)


TINY = ["--quiet", "--epochs", "1", "--set", "data.validation_split=0.25", "--set", "data.channels=3",
        "--set", "training.batch_size=8"]  # fmt: skip


@pytest.mark.parametrize("architecture, size", [("mnist_cnn", 32), ("resnet18", 32), ("capsnet", 28), ("mobilenet_v3_small", 32)])
def test_every_architecture_trains_and_logs_a_loadable_model(tiny: Path, cli, architecture: str, size: int) -> None:
    import mlflow

    result = cli("train", *TINY, "--set", f"data.source={tiny}", "--set", f"model.architecture={architecture}",
                 "--set", f"data.image_size=[{size},{size}]", "--set", f"model.name=tiny-{architecture}")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    run = mlflow.MlflowClient().get_run(result.values["RUN_ID"])
    assert run.data.tags["architecture"] == architecture
    model = mlflow.pytorch.load_model(run.data.tags["model_uri"])
    import torch

    assert model(torch.rand(2, 3, size, size)).shape == (2, 3)


@pytest.mark.parametrize(
    "settings",
    [
        ["training.optimizer=sgd", "training.scheduler=onecycle", "training.loss=nll"],
        ["training.optimizer=adamw", "training.scheduler=cosine", "training.label_smoothing=0.1"],
        ["training.optimizer=adam", "training.scheduler=step", "training.weight_decay=0.0001"],
    ],
    ids=["sgd-onecycle-nll", "adamw-cosine-smoothing", "adam-step"],
)
def test_optimisers_schedulers_and_losses(tiny: Path, cli, settings: list[str]) -> None:
    import mlflow

    sets = [x for s in settings for x in ("--set", s)]
    result = cli("train", *TINY, "--epochs", "2", "--set", f"data.source={tiny}", *sets)
    assert result.exit_code == 0, result.stderr
    c = mlflow.MlflowClient()
    lrs = [m.value for m in c.get_metric_history(result.values["RUN_ID"], "learning_rate")]
    assert len(lrs) == 2 and all(lr > 0 for lr in lrs)
    if "training.scheduler=onecycle" in settings:
        assert lrs[0] == pytest.approx(0.001 / 25)  # one-cycle starts at max_lr / div_factor
    if "training.scheduler=cosine" in settings:
        assert lrs == pytest.approx([0.001, 0.0005])  # the rate each epoch trained with
    losses = [m.value for m in c.get_metric_history(result.values["RUN_ID"], "train_loss")]
    assert all(np.isfinite(losses))


def test_a_bad_precision_is_a_config_error_before_any_run(workdir: Path, cli) -> None:
    result = cli("train", "--quiet", "--epochs", "1", "--set", "training.precision=64-nonsense")
    assert result.exit_code == 2
    assert "training.precision" in result.stderr and "bf16-mixed" in result.stderr
    assert not (workdir / "mlflow.db").exists()  # no run, no store: nothing was started


def test_an_exception_during_training_marks_the_run_failed(tiny: Path, cli) -> None:
    import mlflow

    # A real failure inside trainer.fit: squeezenet's pooling cannot shrink an 8x8 image any further,
    # which the first forward pass finds, after the run has started.
    result = cli("train", *TINY, "--set", f"data.source={tiny}", "--set", "model.architecture=squeezenet1_1",
                 "--set", "data.image_size=[8,8]")  # fmt: skip
    assert result.exit_code == 1
    runs = mlflow.search_runs(experiment_names=["champion"], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]  # never left RUNNING
    assert "config.yaml" in {f.path for f in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_missing_gpu_is_reported_before_any_run(workdir: Path, cli, accelerator: str) -> None:
    result = cli("train", "--quiet", "--set", f"training.accelerator={accelerator}", "--set", "training.devices=2")
    assert result.exit_code == 1
    assert f"training.accelerator={accelerator}" in result.stderr and "training.accelerator=cpu" in result.stderr
    assert not (workdir / "mlflow.db").exists()  # no store, so certainly no run
    assert not (workdir / "cache").exists()  # nor any data preparation


@pytest.mark.parametrize(
    "devices, needed", [(1, 1), (2, 2), (-1, 0), ("auto", 0), ("-1", 0), ("3", 3), ("0,1", 2), ("1,", 2), ([0, 3], 4)]
)
def test_cuda_devices_a_config_needs(devices, needed: int) -> None:
    from champion.train.cluster import _cuda_devices_needed

    assert _cuda_devices_needed(devices) == needed
