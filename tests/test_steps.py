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
