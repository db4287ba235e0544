"""The four step commands chained through the identifiers they print, as an orchestrator would."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FAST

pytestmark = pytest.mark.slow


def test_steps_chain_through_printed_ids(workdir: Path, cli) -> None:
    trained = cli(
        "train", *FAST, "--set", "model.name=steps-cnn", "--set", "export.formats=[onnx,torchscript]",
        "--output-files", "out/train",
    )
    assert trained.exit_code == 0, trained.stderr
    assert set(trained.values) == {"RUN_ID"}
    run_id = (workdir / "out/train/RUN_ID").read_text()

    promoted = cli("promote", "--run-id", run_id, "--quiet")
    assert promoted.exit_code == 0, promoted.stderr
    assert promoted.values["RESULT"] == "passed" and promoted.values["MODEL_VERSION"] == "1"

    exported = cli("export", "--model-name", "steps-cnn", "--alias", "champion", "--quiet")
    assert exported.exit_code == 0, exported.stderr
    from mlflow import MlflowClient

    assert "torchscript/model.pt" in {a.path for a in MlflowClient().list_artifacts(exported.values["EXPORT_RUN_ID"], "torchscript")}

    validated = cli("validate", "--export-run-id", exported.values["EXPORT_RUN_ID"], "--quiet")
    assert validated.exit_code == 0, validated.stderr
    assert validated.values == {"RESULT": "passed", "MODEL_VERSION": "1"}

    # An orchestrator retrying a step gets the same answer and changes nothing.
    again = cli("promote", "--run-id", run_id, "--quiet")
    assert again.exit_code == 0 and again.values["MODEL_VERSION"] == "1", again.stderr
    revalidated = cli("validate", "--export-run-id", exported.values["EXPORT_RUN_ID"], "--quiet")
    assert revalidated.values == {"RESULT": "passed", "MODEL_VERSION": "1"}
    from mlflow import MlflowClient

    assert len(MlflowClient().search_model_versions("name='steps-cnn'")) == 1
    assert len(MlflowClient().search_model_versions("name='steps-cnn-onnx'")) == 1

    carded = cli("card", "--run-id", run_id, "--output-dir", "cards")
    assert carded.exit_code == 0, carded.stderr
    card = Path(carded.values["MODEL_CARD"]).read_text()
    assert "Quality Gate 1" in card and "| threshold |" in card

    from mlflow import MlflowClient

    c = MlflowClient()
    assert c.get_model_version_by_alias("steps-cnn-onnx", "deploy").tags["parent_run_id"] == run_id
    assert c.get_run(run_id).data.tags["gate2.result"] == "passed"


def test_console_script_help_is_fast_and_lists_the_steps() -> None:
    import subprocess
    import sys
    import time

    exe = Path(sys.executable).with_name("champion")
    started = time.perf_counter()
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for step in ("run", "train", "promote", "export", "validate", "card"):
        assert step in out.stdout
    assert "sys.modules" not in out.stdout
    # Not a timing assertion on the machine: a check that --help does not import torch.
    check = subprocess.run(
        [sys.executable, "-c", "import sys, champion.cli; print('torch' in sys.modules, 'mlflow' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )
    assert check.stdout.split() == ["False", "False"], check.stdout + check.stderr
    assert time.perf_counter() - started < 60


def test_training_logs_balancing_and_skipped_files(workdir: Path, cli) -> None:
    import json

    import numpy as np
    from mlflow import MlflowClient
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, count in (("common", 30), ("rare", 6)):
        (workdir / "imgs" / cls).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(workdir / "imgs" / cls / f"{i}.png")
    (workdir / "imgs" / "common" / "broken.png").write_bytes(b"not a png")
    result = cli(
        "train", "--quiet", "--set", "data.source=imgs", "--set", "data.balance=oversample", "--set", "data.on_error=skip",
        "--set", "data.augment.hflip=true", "--set", "data.augment.crop_scale=[0.5,1]", "--epochs", "1",
        "--set", "model.name=imgs-cnn", "--set", "data.validation_split=0.25",
    )
    assert result.exit_code == 0, result.stderr
    c = MlflowClient()
    run_id = result.values["RUN_ID"]
    counts = json.loads(Path(c.download_artifacts(run_id, "data/class_counts.json", str(workdir))).read_text())
    # The split is drawn over all 37 files (10 to validation, stratified), then the broken file leaves
    # the split it fell in (here validation): 23 + 4 train.
    assert counts["train_before_balancing"] == [23, 4] and counts["train_after_balancing"] == [23, 23]
    skipped = Path(c.download_artifacts(run_id, "data/skipped_files.txt", str(workdir))).read_text()
    assert "broken.png" in skipped
    assert c.get_run(run_id).data.params["data.skipped_files"] == "1"


def test_warm_start_export_only_and_approaches(workdir: Path, cli) -> None:
    """Pretrain on digits, fine-tune a 3-class model from models:/…@champion, and re-log a checkpoint."""
    import numpy as np
    from mlflow import MlflowClient
    from PIL import Image

    first = cli("run", *FAST, "--set", "model.name=base")
    assert first.exit_code == 0, first.stderr
    c = MlflowClient()

    # export-only: the best checkpoint of that run, logged again without training
    ckpt = next((workdir / "checkpoints" / first.values["RUN_ID"]).glob("best-*.ckpt"))
    again = cli("train", "--quiet", "--set", "model.name=base", "--export-only", "--checkpoint", str(ckpt))
    assert again.exit_code == 0, again.stderr
    a, b = (c.get_run(r).data for r in (first.values["RUN_ID"], again.values["RUN_ID"]))
    assert b.tags["export_only"] == "true" and "train_loss" not in b.metrics  # nothing was trained
    assert b.metrics["val_accuracy_class_3"] == a.metrics["val_accuracy_class_3"]  # same weights, same answers
    # The gate can judge it: the weights' own validation accuracy is its metric; same as the champion's.
    assert b.metrics["best_val_accuracy"] == pytest.approx(a.metrics["best_val_accuracy"])
    judged = cli("promote", "--run-id", again.values["RUN_ID"], "--quiet")
    assert judged.exit_code == 3 and judged.values["DECIDED_BY"] == "improvement_over_champion", judged.stderr

    rng = np.random.default_rng(0)
    for cls in ("x", "y", "z"):
        (workdir / "three" / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(workdir / "three" / cls / f"{i}.png")
    for approach in ("fine_tuning", "feature_extraction"):
        tuned = cli(
            "train", "--quiet", "--epochs", "1", "--set", "data.source=three", "--set", f"model.name=three-{approach}",
            "--set", f"model.approach={approach}", "--set", "model.pretrained=models:/base@champion",
            "--set", "data.validation_split=0.25",
        )
        assert tuned.exit_code == 0, tuned.stderr
        run = c.get_run(tuned.values["RUN_ID"]).data
        assert run.tags["pretrained.origin"].startswith("models:/base@champion")
        assert run.tags["pretrained.head_replaced"] == "true"
        if approach == "feature_extraction":
            assert int(run.params["params.trainable"]) == 64 * 9 * 3 + 3  # only the new 3-class head


def test_bf16_mixed_precision_trains_on_cpu(workdir: Path, cli) -> None:
    from mlflow import MlflowClient

    result = cli("train", "--quiet", "--epochs", "2", "--set", "training.precision=bf16-mixed", "--set", "model.name=bf16")
    assert result.exit_code == 0, result.stderr
    run = MlflowClient().get_run(result.values["RUN_ID"])
    assert run.data.params["training.precision"] == "bf16-mixed"
    assert run.data.metrics["best_val_accuracy"] > 0.5


def test_best_val_accuracy_follows_the_checkpoint_criterion(workdir: Path, cli) -> None:
    from mlflow import MlflowClient

    result = cli(
        "train", "--quiet", "--epochs", "4", "--set", "model.name=by-loss", "--set", "training.checkpoint.monitor=val_loss",
        "--set", "training.checkpoint.mode=min", "--set", "training.early_stopping.patience=10",
    )
    assert result.exit_code == 0, result.stderr
    c = MlflowClient()
    run_id = result.values["RUN_ID"]
    losses = {m.step: m.value for m in c.get_metric_history(run_id, "val_loss")}
    accuracies = {m.step: m.value for m in c.get_metric_history(run_id, "val_accuracy")}
    best_epoch = min(losses, key=lambda e: (losses[e], e))
    # The gate's metric is the accuracy of the epoch whose weights were logged, not the highest seen.
    assert c.get_run(run_id).data.metrics["best_val_accuracy"] == pytest.approx(accuracies[best_epoch])
