"""The step commands: run, train, promote, export, validate, quantize and card.

Each prints `KEY=value` lines (and, with `--output-files`, writes them) for an orchestrator; the
stage functions they call live in champion.pipeline, champion.train and champion.stages.
"""

from __future__ import annotations

import atexit
import gc
from pathlib import Path
from typing import Optional

import typer

from champion import names
from champion.errors import EXIT_GATE1_REJECTED, EXIT_GATE2_REJECTED, ConfigError
from champion.progress import say
from champion.registry import tracking
from champion.cli.common import (
    BatchOpt,
    ConfigOpt,
    EpochsOpt,
    LrOpt,
    OutputFilesOpt,
    QuietOpt,
    SetOpt,
    _config_epilog,
    _emit,
    _resolve_config,
    app,
    guarded,
)

ExportOnlyOpt = typer.Option(
    False, "--export-only", help="Train nothing: evaluate and log the weights of --checkpoint as the run's model."
)
CheckpointOpt = typer.Option(None, "--checkpoint", help="With --export-only: a .ckpt written by champion train.")


def _check_export_only(export_only: bool, checkpoint: Optional[Path]) -> None:
    """--export-only and --checkpoint go together."""
    if export_only and checkpoint is None:
        raise ConfigError("--export-only needs --checkpoint PATH (a .ckpt from checkpoints/<run_id>/)")
    if checkpoint is not None and not export_only:
        raise ConfigError("--checkpoint goes with --export-only")


def _verdict(result, rejected_code: int, output_files: Optional[Path], **extra: str) -> int:
    """Print a gate's RESULT (and MODEL_VERSION when it registered one); a rejection is its own exit code."""
    values = {"RESULT": result.result, **extra}
    if result.model_version:
        values["MODEL_VERSION"] = str(result.model_version)
    _emit(values, output_files)
    return 0 if result.passed else rejected_code


@app.command(epilog=_config_epilog())
@guarded
def run(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    epochs: Optional[int] = EpochsOpt,
    learning_rate: Optional[float] = LrOpt,
    batch_size: Optional[int] = BatchOpt,
    output_dir: Path = typer.Option(Path("outputs"), "--output-dir", help="Where the model card is written."),
    export_only: bool = ExportOnlyOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
    force_train: bool = typer.Option(
        False, "--force-train",
        help="Train even when an identical finished training exists (same config, data, clean git commit and "
        "seed, deterministic); by default that run is reused and judged by the gates instead.",
    ),
) -> int:
    """Run every step: train, Quality Gate 1, export, Quality Gate 2, register, model card."""
    cfg = _resolve_config(config, set_, epochs, learning_rate, batch_size)
    _check_export_only(export_only, checkpoint)
    from champion.pipeline import run as run_pipeline  # torch and MLflow: only once a command runs

    outcome = run_pipeline(cfg, output_dir, quiet=quiet, checkpoint=checkpoint, force_train=force_train)
    _emit(outcome.outputs, output_files)
    if outcome.error is not None:  # after the float model shipped (the int8 gate): exits as the error it is
        raise outcome.error
    # The process ends next: its last garbage collection would walk every object torch and MLflow
    # made only to free them anyway (about 1 s on MNIST). Frozen objects are skipped.
    atexit.register(gc.freeze)
    return outcome.exit_code


@app.command(epilog=_config_epilog())
@guarded
def train(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    epochs: Optional[int] = EpochsOpt,
    learning_rate: Optional[float] = LrOpt,
    batch_size: Optional[int] = BatchOpt,
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run from its last checkpoint, into the same MLflow run."
    ),
    run_id: Optional[str] = typer.Option(
        None, "--run-id", help="With --resume: the run to continue (default: the latest unfinished run of model.name)."
    ),
    export_only: bool = ExportOnlyOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> int:
    """Prepare the data and train; prints RUN_ID."""
    from champion.train.run import resume as resume_training, train as train_model  # torch: only once a command runs

    cfg = _resolve_config(config, set_, epochs, learning_rate, batch_size)
    if run_id and not resume:
        raise ConfigError("--run-id goes with --resume (to continue that run)")
    if resume and export_only:
        raise ConfigError("--resume continues training; --export-only trains nothing: choose one")
    _check_export_only(export_only, checkpoint)
    if resume:
        result = resume_training(run_id, cfg.experiment, cfg.model.name, quiet=quiet)
    else:
        result = train_model(cfg, quiet=quiet, checkpoint=checkpoint)
    if result is not None:  # None: a DDP worker process, which reports nothing
        _emit({"RUN_ID": result.run_id}, output_files)
    return 0


@app.command()
@guarded
def promote(
    run_id: str = typer.Option(..., "--run-id", help="Training run to judge."),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> int:
    """Quality Gate 1: register the run's model as @champion if it beats the champion; prints RESULT, MODEL_VERSION."""
    from champion.stages.promote import promote as run_gate  # torch and MLflow: only once a command runs

    result = run_gate(run_id, quiet=quiet)
    say(result.summary(), quiet)
    return _verdict(result, EXIT_GATE1_REJECTED, output_files, DECIDED_BY=result.decided_by)


@app.command()
@guarded
def export(
    model_name: str = typer.Option(..., "--model-name", help="Registered model to export."),
    alias: str = typer.Option(names.CHAMPION_ALIAS, "--alias", help="Alias of the version to export."),
    version: Optional[str] = typer.Option(None, "--version", help="Version number to export (instead of --alias)."),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> int:
    """Export a registered version to ONNX (and TorchScript) in an export run; prints EXPORT_RUN_ID."""
    from champion.stages.export import export as run_export  # torch: only once a command runs

    result = run_export(model_name, alias=alias, version=version, quiet=quiet)
    _emit({"EXPORT_RUN_ID": result.export_run_id, "MODEL_VERSION": result.version}, output_files)
    return 0


@app.command()
@guarded
def validate(
    export_run_id: str = typer.Option(..., "--export-run-id", help="Export run to check."),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> int:
    """Quality Gate 2: ONNX Runtime vs PyTorch parity; registers <name>-onnx @deploy on pass. Prints RESULT, MODEL_VERSION."""
    from champion.stages.validate import validate as run_gate2  # torch and onnxruntime: only once a command runs

    return _verdict(run_gate2(export_run_id, quiet=quiet), EXIT_GATE2_REJECTED, output_files)


@app.command()
@guarded
def quantize(
    export_run_id: str = typer.Option(..., "--export-run-id", help="Export run whose ONNX model passed Quality Gate 2."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="export.int8.KEY=VALUE over the training run's config: quantize another way (the bar stays the stored policy's). Repeatable."
    ),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> int:
    """int8 gate: quantize the export to int8, judge it against the float model; registers <name>-onnx-int8 @deploy on pass.

    Prints INT8_RESULT, INT8_RUN_ID and, on pass, INT8_MODEL_VERSION. A rejection exits 0: the float
    model ships either way (int8_gate_report.json in the int8 run says why).
    """
    from champion.stages.quantize import gate  # onnxruntime: only once a command runs

    result = gate(export_run_id, quiet=quiet, overrides=set_)
    say(result.summary(), quiet)
    _emit(result.outputs(), output_files)
    return 0


@app.command()
@guarded
def card(
    run_id: str = typer.Option(..., "--run-id", help="Training run to describe."),
    output_dir: Path = typer.Option(Path("outputs"), "--output-dir", help="Folder the card is written under."),
    output_files: Optional[Path] = OutputFilesOpt,
) -> int:
    """Write the model card (markdown and plots) and log it to the run; prints MODEL_CARD."""
    from champion.stages.card import write_run_card  # matplotlib and MLflow: only once a command runs

    tracking.setup_tracking()
    path = write_run_card(run_id, output_dir)
    _emit({"MODEL_CARD": str(path)}, output_files)
    return 0
