"""The `champion` command: a thin table of subcommands over the library's stage functions.

Step commands print `KEY=value` lines on stdout (progress goes to stderr) and, with
`--output-files DIR`, also write each value to `DIR/KEY` for an orchestrator. Heavy libraries are
imported inside the commands so that `champion --help` stays fast.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

import typer

from champion.errors import EXIT_ERROR, ChampionError
from champion import names

app = typer.Typer(
    help="Train image classifiers, and ship only the ones that beat the champion.\n\n"
    "Exit codes: 0 success, 1 error, 2 usage or configuration error, 3 rejected by Quality Gate 1, "
    "4 rejected by Quality Gate 2.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _config_epilog() -> str:
    from champion.config import describe_keys

    rows = "\n\n".join(f"{key} = {default}  {desc}" for key, default, desc in describe_keys())
    return (
        "Every configuration key can also be set by an environment variable CHAMPION_<SECTION>__<KEY>, "
        "its value read as YAML like a --set value: CHAMPION_TRAINING__EPOCHS=3, "
        "CHAMPION_TRAINING__EARLY_STOPPING__PATIENCE=5, CHAMPION_DATA__IMAGE_SIZE=[64,64], CHAMPION_EXPERIMENT=demo. "
        "Precedence, lowest first: built-in default, --config file, environment, --set and "
        "--epochs/--learning-rate/--batch-size. The resolved config is logged with the training run; promote, "
        "export, validate and train --resume use that logged config, never the environment.\n\n"
        "Configuration keys (YAML paths, and --set KEY=VALUE; values are read as YAML):\n\n" + rows
    )


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (default: the built-in default config).")
SetOpt = typer.Option(None, "--set", help="Override a config key by dotted path, e.g. --set training.epochs=3. Repeatable.")
EpochsOpt = typer.Option(None, "--epochs", help="Shortcut for --set training.epochs=N.")
LrOpt = typer.Option(None, "--learning-rate", help="Shortcut for --set training.learning_rate=X.")
BatchOpt = typer.Option(None, "--batch-size", help="Shortcut for --set training.batch_size=N.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress output; only the KEY=value lines.")
OutputFilesOpt = typer.Option(None, "--output-files", help="Also write each KEY=value as the file DIR/KEY (for Argo outputs).")


ExportOnlyOpt = typer.Option(
    False, "--export-only", help="Train nothing: evaluate and log the weights of --checkpoint as the run's model."
)
CheckpointOpt = typer.Option(None, "--checkpoint", help="With --export-only: a .ckpt written by champion train.")


def _check_export_only(export_only: bool, checkpoint: Optional[Path]) -> None:
    from champion.errors import ConfigError

    if export_only and checkpoint is None:
        raise ConfigError("--export-only needs --checkpoint PATH (a .ckpt from checkpoints/<run_id>/)")
    if checkpoint is not None and not export_only:
        raise ConfigError("--checkpoint goes with --export-only")


# Every KEY a command prints: the only names an `--output-files` folder from an earlier release holds.
OUTPUT_KEYS = frozenset({
    "RUN_ID", "RESULT", "DECIDED_BY", "MODEL_VERSION", "EXPORT_RUN_ID", "GATE2_RESULT", "ONNX_MODEL_VERSION",
    "MODEL_CARD", "DATA_DIGEST", "DATA_PATH", "TRAIN_SIZE", "VAL_SIZE", "TEST_SIZE", "SKIPPED",
    "TRITON_MODEL_DIR", "TRITON_MODEL_VERSION", "INT8_RESULT", "INT8_RUN_ID", "INT8_MODEL_VERSION",
})  # fmt: skip


def _emit(values: dict[str, str], output_files: Optional[Path]) -> None:
    for key, value in values.items():
        print(f"{key}={value}", flush=True)
    if output_files is not None:
        from champion.files import atomic_write

        for key, value in values.items():
            atomic_write(output_files / key, str(value))


def _verdict(result, rejected_code: int, output_files: Optional[Path], **extra: str) -> int:
    """Print a gate's RESULT (and MODEL_VERSION when it registered one); a rejection is its own exit code."""
    values = {"RESULT": result.result, **extra}
    if result.model_version:
        values["MODEL_VERSION"] = str(result.model_version)
    _emit(values, output_files)
    return 0 if result.passed else rejected_code


def _claim_outputs(output_files: Path) -> None:
    """Only a folder champion made (or one holding nothing but earlier output files) is written into:
    `--output-files .` must not overwrite a user's file that happens to be called RESULT."""
    from champion.files import claim

    claim(output_files, "outputs", adopt=lambda folder: all(p.is_file() and p.name in OUTPUT_KEYS for p in folder.iterdir()))


def _guard(fn: Callable[[], int], output_files: Optional[Path] = None) -> None:
    """Run a command body: user-facing errors become one message and their exit code.

    The `--output-files` folder is claimed first: a folder that cannot be used must not cost a
    training run, nor hide the step's real outcome behind a late error.
    """
    from champion.workflow import mode

    workflow = False
    try:
        # Workflow mode (CHAMPION_WORKFLOW_MODE=1): a rejection exits 0, a transient failure 75.
        workflow = mode.active()
        if output_files is not None:
            _claim_outputs(output_files)
        code = fn()
    except ChampionError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(mode.failure_code(exc, exc.exit_code, workflow)) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - an unexpected failure is shown in full and exits 1, never 0
        from champion.registry.tracking import credential_error

        # A credential refused mid-step (a token that expired) outside any registry_errors: still one message.
        if (refused := credential_error(exc, "complete this step")) is not None:
            print(f"error: {refused}", file=sys.stderr, flush=True)
            raise typer.Exit(EXIT_ERROR) from None
        traceback.print_exc()
        raise typer.Exit(mode.failure_code(exc, EXIT_ERROR, workflow)) from None
    raise typer.Exit(mode.success_code(code, workflow))


def _resolve_config(config: Optional[Path], overrides: Optional[list[str]], epochs, lr, batch):
    import os

    from champion.config import SEED_FLAGS, load_config

    sets = list(overrides or [])
    for flag, value in (("epochs", epochs), ("learning_rate", lr), ("batch_size", batch)):
        if value is not None:
            sets.append(f"{SEED_FLAGS[flag]}={value}")
    # A config resolved afresh reads CHAMPION_<SECTION>__<KEY> variables; a logged run's config
    # (tracking.load_run_config: promote, export, validate, the training of --resume) never does.
    return load_config(config, sets, env=os.environ)


@app.command(epilog=_config_epilog())
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
) -> None:
    """Run every step: train, Quality Gate 1, export, Quality Gate 2, register, model card."""

    def body() -> int:
        cfg = _resolve_config(config, set_, epochs, learning_rate, batch_size)
        _check_export_only(export_only, checkpoint)
        from champion.pipeline import run as run_pipeline

        outcome = run_pipeline(cfg, output_dir, quiet=quiet, checkpoint=checkpoint, force_train=force_train)
        _emit(outcome.outputs, output_files)
        if outcome.error is not None:  # after the float model shipped (the int8 gate): exits as the error it is
            raise outcome.error
        import atexit
        import gc

        # The process ends next: its last garbage collection would walk every object torch and MLflow
        # made only to free them anyway (about 1 s on MNIST). Frozen objects are skipped.
        atexit.register(gc.freeze)
        return outcome.exit_code

    _guard(body, output_files)


@app.command(epilog=_config_epilog())
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
) -> None:
    """Prepare the data and train; prints RUN_ID."""

    def body() -> int:
        from champion.errors import ConfigError
        from champion.train.run import resume as resume_training
        from champion.train.run import train as train_model

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

    _guard(body, output_files)


@app.command()
def promote(
    run_id: str = typer.Option(..., "--run-id", help="Training run to judge."),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Quality Gate 1: register the run's model as @champion if it beats the champion; prints RESULT, MODEL_VERSION."""

    def body() -> int:
        from champion.errors import EXIT_GATE1_REJECTED
        from champion.stages.promote import promote as run_gate

        result = run_gate(run_id, quiet=quiet)
        return _verdict(result, EXIT_GATE1_REJECTED, output_files, DECIDED_BY=result.decided_by)

    _guard(body, output_files)


@app.command()
def export(
    model_name: str = typer.Option(..., "--model-name", help="Registered model to export."),
    alias: str = typer.Option("champion", "--alias", help="Alias of the version to export."),
    version: Optional[str] = typer.Option(None, "--version", help="Version number to export (instead of --alias)."),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Export a registered version to ONNX (and TorchScript) in an export run; prints EXPORT_RUN_ID."""

    def body() -> int:
        from champion.stages.export import export as run_export

        result = run_export(model_name, alias=alias, version=version, quiet=quiet)
        _emit({"EXPORT_RUN_ID": result.export_run_id, "MODEL_VERSION": result.version}, output_files)
        return 0

    _guard(body, output_files)


@app.command()
def validate(
    export_run_id: str = typer.Option(..., "--export-run-id", help="Export run to check."),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Quality Gate 2: ONNX Runtime vs PyTorch parity; registers <name>-onnx @deploy on pass. Prints RESULT, MODEL_VERSION."""

    def body() -> int:
        from champion.errors import EXIT_GATE2_REJECTED
        from champion.stages.validate import validate as run_gate2

        return _verdict(run_gate2(export_run_id, quiet=quiet), EXIT_GATE2_REJECTED, output_files)

    _guard(body, output_files)


@app.command()
def quantize(
    export_run_id: str = typer.Option(..., "--export-run-id", help="Export run whose ONNX model passed Quality Gate 2."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="export.int8.KEY=VALUE over the training run's config: quantize another way (the bar stays the stored policy's). Repeatable."
    ),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> None:
    """int8 gate: quantize the export to int8, judge it against the float model; registers <name>-onnx-int8 @deploy on pass.

    Prints INT8_RESULT, INT8_RUN_ID and, on pass, INT8_MODEL_VERSION. A rejection exits 0: the float
    model ships either way (int8_gate_report.json in the int8 run says why).
    """

    def body() -> int:
        from champion.stages.quantize import gate
        from champion.progress import say

        result = gate(export_run_id, quiet=quiet, overrides=set_)
        say(result.summary(), quiet)
        _emit(result.outputs(), output_files)
        return 0

    _guard(body, output_files)


@app.command()
def card(
    run_id: str = typer.Option(..., "--run-id", help="Training run to describe."),
    output_dir: Path = typer.Option(Path("outputs"), "--output-dir", help="Folder the card is written under."),
    output_files: Optional[Path] = OutputFilesOpt,
) -> None:
    """Write the model card (markdown and plots) and log it to the run; prints MODEL_CARD."""

    def body() -> int:
        from champion.registry import tracking
        from champion.stages.card import write_card

        tracking.setup_tracking()
        name = tracking.get_run(run_id).info.run_name
        path = write_card(run_id, output_dir / name / names.MODEL_CARD_DIR)
        _emit({"MODEL_CARD": str(path)}, output_files)
        return 0

    _guard(body, output_files)


data_app = typer.Typer(help="Prepare, inspect and clear the data cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare", epilog=_config_epilog())
def data_prepare(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Ingest data.source into the cache (a no-op when the entry exists); prints DATA_DIGEST and DATA_PATH."""

    def body() -> int:
        from champion import ingest
        from champion.progress import data_progress

        cfg = _resolve_config(config, set_, None, None, None)
        with data_progress(quiet) as report:
            data = ingest.prepare(cfg.data, cfg.training.seed, report)
        counts = {f"{k.upper()}_SIZE": str(len(v)) for k, v in data.splits.items()}
        _emit({"DATA_DIGEST": data.digest, "DATA_PATH": str(data.path), **counts, "SKIPPED": str(len(data.manifest["skipped"]))}, output_files)
        return 0

    _guard(body, output_files)


@data_app.command("inspect")
def data_inspect(
    digest: Optional[str] = typer.Argument(None, help="Entry to show in detail (default: list all)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """List the cache entries (digest, source, classes, split sizes), or show one."""

    def body() -> int:
        from rich.console import Console
        from rich.table import Table

        from champion import ingest

        cfg = _resolve_config(config, set_, None, None, None)
        root = ingest.cache_root(cfg.data)
        entries = [e for e in ingest.list_entries(root) if digest in (None, e["digest"])]
        if digest and not entries:
            raise ChampionError(f"no cache entry {digest!r} under {root}")
        table = Table(title=f"champion data cache: {root}")
        table.add_column("digest", no_wrap=True, min_width=16)
        for col in ("source", "classes", "image", "train", "val", "test", "skipped"):
            table.add_column(col)
        for e in entries:
            c = e["counts"]
            classes = ", ".join(e["classes"]) if len(e["classes"]) <= 12 else f"{len(e['classes'])} classes"
            table.add_row(e["digest"], e["source"], classes, "x".join(map(str, e["image_shape"])),
                          str(c["train"]), str(c["val"]), str(c["test"]), str(len(e["skipped"])))  # fmt: skip
        Console().print(table)
        if digest:
            for line in entries[0]["skipped"]:
                print(f"skipped: {line}")
        return 0

    _guard(body)


@data_app.command("clear")
def data_clear(
    digest: Optional[str] = typer.Argument(None, help="Entry to remove (default: everything champion wrote in the cache)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Clear everything without asking (needed when not on a terminal)."),
) -> None:
    """Remove one cache entry, or everything champion wrote in the cache (entries, downloads, S3 copies).

    Only a folder champion marked as its cache (or an older cache it recognises) is cleared, and only
    what champion wrote there: other files in it are never touched.
    """

    def body() -> int:
        from champion import ingest
        from champion.errors import ConfigError

        def confirm(items: list[str]) -> bool:
            if yes:
                return True
            if not sys.stdin.isatty():
                raise ConfigError(f"clearing the whole cache {root} needs confirmation: pass --yes (nothing was removed)")
            shown = ", ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")
            return typer.confirm(f"Remove {len(items)} item(s) from {root}: {shown}?", default=False, err=True)

        cfg = _resolve_config(config, set_, None, None, None)
        root = ingest.cache_root(cfg.data)
        removed = ingest.clear(root, digest, confirm=None if digest else confirm)
        _emit({"REMOVED": ",".join(removed) or "nothing"}, None)
        return 0

    _guard(body)


def _print_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A rich table on a terminal; tab-separated lines (a header, then one per row) when piped, so
    that nothing is cropped to fit a width and scripts can cut columns."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    for row in (columns, *rows):
        print("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))


@app.command("runs")
def runs(
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="Experiment to search (default: the config's `experiment`)."),
    filter_: str = typer.Option("", "--filter", help="MLflow search filter, e.g. \"metrics.test_accuracy > 0.99 and tags.gate1.result = 'passed'\"."),
    order_by: Optional[list[str]] = typer.Option(None, "--order-by", help="MLflow order-by clause, e.g. 'metrics.best_val_accuracy DESC'. Repeatable (default: newest first)."),
    max_results: int = typer.Option(100, "--max", help="At most this many runs."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    """Search runs with MLflow's filter syntax (mlflow.search_runs); a table, or JSON lines with --json."""

    def body() -> int:
        import json

        from champion.registry import tracking

        tracking.setup_tracking()
        name = experiment or _resolve_config(None, None, None, None, None).experiment
        found = tracking.search_runs(name, filter_, order_by, max_results)
        if as_json:
            for row in found:
                print(json.dumps(row, sort_keys=True))
            return 0
        metric_keys = ("best_val_accuracy", "test_accuracy")
        rows = [
            (r["run_id"], r["run_name"] or "", r["status"], r["start_time"] or "",
             *(f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "" for k in metric_keys),
             r["tags"].get(names.GATE1_RESULT, ""), r["tags"].get(names.GATE2_RESULT, ""), r["tags"].get(names.DATA_DIGEST, ""))
            for r in found
        ]  # fmt: skip
        title = f"runs of {name!r}" + (f" where {filter_}" if filter_ else "")
        _print_table(title, ("run id", "name", "status", "started (UTC)", *metric_keys, "gate1", "gate2", "data digest"), rows)
        return 0

    _guard(body)


models_app = typer.Typer(
    help="Registered models: versions and aliases, alias history, rollback, the stored promotion policy.",
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_main(ctx: typer.Context) -> None:
    """Registered models: versions and aliases (the default), history, rollback, policy."""
    if ctx.invoked_subcommand is None:
        models_list(None)


@models_app.command("list")
def models_list(name: Optional[str] = typer.Argument(None, help="Only this registered model.")) -> None:
    """Each registered model's versions: aliases, gate results, data digest, metric, created."""

    def body() -> int:
        from champion.registry import history, tracking

        tracking.setup_tracking()
        rows = [
            (r["model"], r["version"], ", ".join(f"@{a}" for a in r["aliases"]), r["gate1"] or "", r["gate2"] or "",
             r["data_digest"] or "", r["metric"] or "", r["created"], "yes" if r["rolled_back"] else "")
            for r in history.overview(name)
        ]  # fmt: skip
        columns = ("model", "version", "aliases", "gate1", "gate2", "data digest", "metric", "created (UTC)", "rolled back")
        _print_table("registered models", columns, rows)
        return 0

    _guard(body)


@models_app.command("history")
def models_history(
    name: str = typer.Argument(..., help="Registered model name (model.name; `<name>-onnx` works too)."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Only the events of this alias (e.g. champion, deploy)."),
) -> None:
    """The alias moves and policy changes of NAME, oldest first: when, reason, alias, from -> to, who, report."""

    def body() -> int:
        from champion.registry import history, tracking

        tracking.setup_tracking()
        model = history.owner(name)
        found = history.events(model, alias=alias)
        if not found and tracking.registered_model(model) is None:
            raise ChampionError(f"there is no registered model {name!r} and no history for it; `champion models` lists them")
        rows = [
            (e.when, e.reason + (" (deleted)" if e.deleted else ""), e.registered_model, e.alias or "", e.from_version or "",
             e.to_version or "", e.who, e.host, e.report or "", e.event_id)
            for e in found
        ]  # fmt: skip
        columns = ("when (UTC, store clock)", "reason", "registered model", "alias", "from", "to", "who", "host", "report", "event")
        _print_table(f"history of {model!r}" + (f" @{alias}" if alias else ""), columns, rows)
        return 0

    _guard(body)


@models_app.command("rollback")
def models_rollback(
    name: str = typer.Argument(..., help="Registered model name (model.name; `<name>-onnx` works too; `<name>-onnx-int8` for the int8 model's deploy)."),
    alias: str = typer.Option("deploy", "--alias", help="deploy (what is served, on <name>-onnx, or on <name>-onnx-int8 when named) or champion."),
    to: Optional[str] = typer.Option(None, "--to", help="Version to move the alias to (default: its previous holder in the history)."),
) -> None:
    """Move an alias back to its previous holder (or --to VERSION); prints MODEL_VERSION.

    The target must have passed the gate the alias requires (champion: Gate 1, deploy: Gate 2, or the
    int8 gate on NAME-onnx-int8).
    Repeated rollbacks walk further back through earlier holders. Recorded as a `rollback` event;
    the version moved away from is tagged rolled_back=true.
    """

    def body() -> int:
        from champion.registry import history, tracking
        from champion.errors import ChampionError

        tracking.setup_tracking()
        moved = history.rollback(name, alias, to)
        target = moved.event.registered_model
        print(f"rolled back @{alias} of {target}: v{moved.from_version} -> v{moved.to_version}", file=sys.stderr)
        _emit({"MODEL_VERSION": str(moved.to_version)}, None)
        if alias == tracking.DEPLOY_ALIAS:
            try:
                note = history.other_deploy(moved.event.model, target)
            except ChampionError as exc:  # the rollback is done and said; only the note could not be made
                note = f"could not check the other deployed model: {exc}"
            if note:
                print(f"note: {note}", file=sys.stderr)
        return 0

    _guard(body)


@models_app.command("policy")
def models_policy(
    name: str = typer.Argument(..., help="Registered model name (model.name)."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Change a key, e.g. --set promotion_criteria.threshold=0.95 or --set export.atol=1e-4 "
        "(value read as YAML). Repeatable; recorded as a `policy changed` event.",
    ),  # fmt: skip
) -> None:
    """Show the promotion policy stored on NAME (the bar of Gate 1 and Gate 2), or change it with --set.

    Prints one `key=value` line per policy key (values as JSON, which --set reads back).
    """

    def body() -> int:
        import json

        from champion.registry import policy, tracking

        tracking.setup_tracking()
        if set_:
            old, shown = policy.change(name, set_)
            before = old.flat() if old else {}
            for key, value in shown.flat().items():
                if before.get(key, object()) != value:
                    print(f"changed: {key}: {json.dumps(before.get(key))} -> {json.dumps(value)}", file=sys.stderr)
        else:
            found = policy.stored(name)
            if found is None:
                raise ChampionError(
                    f"{name!r} has no stored promotion policy: the first `champion promote` of {name!r} stores it "
                    f"(or set one with `champion models policy {name} --set KEY=VALUE`)"
                )
            shown = found
        for key, value in shown.flat().items():
            print(f"{key}={json.dumps(value)}")
        return 0

    _guard(body)


deploy_app = typer.Typer(help="Deployment artefacts for the validated ONNX model (<name>-onnx @deploy).", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("triton")
def deploy_triton(
    model_name: str = typer.Option(..., "--model-name", help="Registered model, NAME or NAME-onnx; Triton serves it as NAME."),
    repository: str = typer.Option(..., "--repository", help="Triton model repository: a local folder or s3://bucket/prefix."),
    alias: str = typer.Option("deploy", "--alias", help="Alias of NAME-onnx to deploy."),
    version: Optional[str] = typer.Option(None, "--version", help="Version of NAME-onnx to deploy (instead of --alias); a lower one rolls back."),
    kind: str = typer.Option("cpu", "--kind", help="cpu or gpu: the instance_group kind (KIND_CPU, KIND_GPU)."),
    instances: int = typer.Option(1, "--instances", help="Model instances Triton runs (instance_group count)."),
    keep: Optional[int] = typer.Option(None, "--keep", help="Keep N version folders this command wrote (the deployed one first), delete the rest."),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Write NAME-onnx into a Triton model repository as DIR/NAME (config.pbtxt, labels.txt, VERSION/model.onnx).

    Prints TRITON_MODEL_DIR and TRITON_MODEL_VERSION. Serve with `tritonserver --model-repository=DIR`.
    """

    def body() -> int:
        from champion.deploy.triton import deploy

        result = deploy(model_name, repository, alias=alias, version=version, kind=kind, instances=instances, keep=keep, quiet=quiet)
        _emit({"TRITON_MODEL_DIR": result.model_dir, "TRITON_MODEL_VERSION": result.version}, output_files)
        return 0

    _guard(body, output_files)


ManifestOutputOpt = typer.Option(None, "--output", "-o", help="Write the YAML to FILE (atomically) instead of stdout.")


@deploy_app.command("kserve")
def deploy_kserve(
    model_name: str = typer.Option(..., "--model-name", help="Registered model, NAME or NAME-onnx; served as NAME."),
    repository: str = typer.Option(
        ..., "--repository", help="The Triton repository deploy triton wrote: s3://BUCKET/prefix, gs://..., pvc://CLAIM/path or an absolute path in the pod."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="InferenceService name (default: from NAME, a DNS-1123 label)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Namespace (default: kubectl's current one)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="ServingRuntime to use (default: the one KServe selects for the triton format)."),
    runtime_version: Optional[str] = typer.Option(None, "--runtime-version", help="Triton image tag, e.g. 24.08-py3 (default: the runtime's)."),
    service_account: Optional[str] = typer.Option(None, "--service-account", help="ServiceAccount whose Secret holds the S3/GCS credentials."),
    cpu: str = typer.Option("1", "--cpu", help="CPU requested per replica."),
    memory: str = typer.Option("2Gi", "--memory", help="Memory requested and limited per replica."),
    gpus: int = typer.Option(0, "--gpus", help="nvidia.com/gpu per replica (with deploy triton --kind gpu)."),
    min_replicas: Optional[int] = typer.Option(None, "--min-replicas", help="Fewest replicas (0: scale to zero, serverless mode)."),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", help="Most replicas."),
    output: Optional[Path] = ManifestOutputOpt,
) -> None:
    """Print a KServe InferenceService (v1beta1) serving NAME from the Triton repository deploy triton wrote."""

    def body() -> int:
        from champion.deploy import kserve, manifests

        isvc = kserve.inference_service(
            model_name, repository, name=name, namespace=namespace, runtime=runtime, runtime_version=runtime_version,
            service_account=service_account, cpu=cpu, memory=memory, gpus=gpus, min_replicas=min_replicas, max_replicas=max_replicas,
        )  # fmt: skip
        manifests.write(manifests.to_yaml([isvc], "deploy kserve"), output)
        return 0

    _guard(body)


@deploy_app.command("training-job")
def deploy_training_job(
    tracking_uri: str = typer.Option(..., "--tracking-uri", help="MLflow tracking server the pod reaches (MLFLOW_TRACKING_URI)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    step: str = typer.Option("run", "--step", help="run (every step) or train (train only)."),
    image: Optional[str] = typer.Option(None, "--image", help="champion's image (default: champion:<version>, from the Dockerfile)."),
    mlflow_secret: Optional[str] = typer.Option(None, "--mlflow-secret", help="Secret with username and password for MLflow (read by reference)."),
    s3_secret: Optional[str] = typer.Option(None, "--s3-secret", help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (s3:// data)."),
    s3_endpoint: Optional[str] = typer.Option(None, "--s3-endpoint", help="AWS_ENDPOINT_URL in the pod (MinIO, ...)."),
    name: Optional[str] = typer.Option(None, "--name", help="Job name (default: train-<model.name>, a DNS-1123 label)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Namespace (default: kubectl's current one)."),
    cpu: str = typer.Option("2", "--cpu", help="CPU requested."),
    memory: str = typer.Option("4Gi", "--memory", help="Memory requested and limited."),
    gpus: int = typer.Option(0, "--gpus", help="nvidia.com/gpu requested; training runs on them."),
    retries: int = typer.Option(2, "--retries", help="Pods retried after a transient failure (a server not reached), never after another."),
    output: Optional[Path] = ManifestOutputOpt,
) -> None:
    """Print a Kubernetes Job (and a ConfigMap with --config) running champion run or train in champion's image."""

    def body() -> int:
        from champion.deploy import manifests
        from champion.workflow import training_job

        docs = training_job.training_job(
            step=step, image=image, config=config, overrides=set_, tracking_uri=tracking_uri, mlflow_secret=mlflow_secret,
            s3_secret=s3_secret, s3_endpoint=s3_endpoint, name=name, namespace=namespace, cpu=cpu, memory=memory,
            gpus=gpus, retries=retries,
        )  # fmt: skip
        manifests.write(manifests.to_yaml(docs, "deploy training-job"), output)
        return 0

    _guard(body)


@app.command("serve")
def serve(
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Registered model, NAME or NAME-onnx (default: the registry's only -onnx model); served as NAME."),
    alias: str = typer.Option("deploy", "--alias", help="Alias of NAME-onnx to serve."),
    version: Optional[str] = typer.Option(None, "--version", help="Version of NAME-onnx to serve (instead of --alias)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", help="Most items one ONNX Runtime run takes (and one request may hold)."),
    max_delay_ms: float = typer.Option(2.0, "--max-delay-ms", help="The longest a request waits for others, already being received, to batch with."),
    max_request_bytes: int = typer.Option(64 * 1024**2, "--max-request-bytes", help="Larger request bodies get 413."),
    max_elements: int = typer.Option(16 * 1024**2, "--max-elements", help="Most tensor elements per request (decoded images count); more gets 413."),
    reload_seconds: Optional[float] = typer.Option(None, "--reload-on-alias-change", help="Every SECONDS, serve the version --alias has moved to (loaded and verified first)."),
    quiet: bool = QuietOpt,
) -> None:
    """Serve NAME-onnx over the Open Inference Protocol (KServe v2 REST) with ONNX Runtime, as model NAME.

    Takes the graph's float tensors (as Triton does) or encoded images in the BYTES input `image`,
    prepared exactly as training's were. SIGTERM or Ctrl-C finish in-flight requests, then exit 0;
    SIGHUP serves the version --alias names now, if it has moved.
    """

    def body() -> int:
        from champion.deploy.serve import Limits, serve

        limits = Limits(max_batch_size, max_delay_ms, max_request_bytes, max_elements)
        serve(model_name, alias, version, host, port, limits, reload_seconds, quiet)
        return 0

    _guard(body)


workflow_app = typer.Typer(
    help="Run the steps as an Argo Workflow: the WorkflowTemplate (argo), and a local run of it (run-local).",
    no_args_is_help=True,
)
app.add_typer(workflow_app, name="workflow")


@workflow_app.command("argo")
def workflow_argo(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    image: Optional[str] = typer.Option(None, "--image", help="Container image of every step (default: champion:<version>, what the Dockerfile builds)."),
    name: Optional[str] = typer.Option(None, "--name", help="WorkflowTemplate name, DNS-1123 (default: champion-<model.name>)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Namespace of the WorkflowTemplate (default: kubectl's current one)."),
    gpus: int = typer.Option(0, "--gpus", help="GPUs for the train step (nvidia.com/gpu); also sets training.accelerator=gpu and training.devices."),
    cpu: str = typer.Option("2", "--cpu", help="CPU request of the train step (a Kubernetes quantity)."),
    memory: str = typer.Option("4Gi", "--memory", help="Memory request and limit of the train step."),
    secret: str = typer.Option("champion-mlflow", "--secret", help="Kubernetes Secret the steps read credentials from, by reference (docs/workflow.md lists the keys)."),
    tracking_uri: str = typer.Option("http://mlflow:5000", "--tracking-uri", help="Default of the tracking-uri parameter: the MLflow server every step talks to."),
    triton_repository: Optional[str] = typer.Option(None, "--triton-repository", help="Default of the triton-repository parameter: s3://bucket/prefix, or /models/… with --models-volume."),
    models_volume: Optional[str] = typer.Option(None, "--models-volume", help="PersistentVolumeClaim mounted at /models: the Triton repository and training checkpoints (a retried train resumes)."),
) -> None:
    """Print an Argo WorkflowTemplate (YAML) that runs the steps, one container each.

    train -> promote -> card, and export -> validate -> deploy triton when the gates pass. Built with hera and checked against Argo's schema. The config (--config, --set) becomes the `config`
    parameter; nothing is written when it has an unknown key or any option is bad (exit 2).
    Submit with `kubectl apply -f wf.yaml` and `argo submit --from workflowtemplate/NAME`.
    """

    def body() -> int:
        from champion.config import load_config
        from champion.workflow import argo

        cfg = load_config(config, set_)  # the file and --set only: the environment is the pods', not this shell's
        opts = argo.Options(
            image=image or argo.DEFAULT_IMAGE, name=name, namespace=namespace, gpus=gpus, cpu=cpu, memory=memory,
            secret=secret, tracking_uri=tracking_uri, triton_repository=triton_repository, models_volume=models_volume,
        )  # fmt: skip
        sys.stdout.write(argo.render(cfg, opts))
        return 0

    _guard(body)


@workflow_app.command("run-local")
def workflow_run_local(
    path: Path = typer.Argument(..., help="WorkflowTemplate YAML, as `champion workflow argo` writes it."),
    param: Optional[list[str]] = typer.Option(None, "--parameter", "-p", help="Workflow parameter NAME=VALUE (as argo submit -p). Repeatable."),
    secrets: Optional[Path] = typer.Option(None, "--secrets", help="YAML {secret name: {KEY: value}} for the template's secretKeyRefs."),
    volume: Optional[list[str]] = typer.Option(None, "--volume", help="CLAIM=DIR: the folder that backs a PersistentVolumeClaim. Repeatable."),
    env: Optional[list[str]] = typer.Option(None, "--env", help="NAME=VALUE added to every step's environment. Repeatable."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the tasks run and log (default: workflow-runs/<name>-<time>)."),
    quiet: bool = QuietOpt,
) -> None:
    """Run a WorkflowTemplate's DAG on this machine (a declared subset of Argo).

    Each container's command runs as a local process, with Argo's parameter substitution, depends,
    when, retries and output parameters (docs/workflow.md lists the subset; anything else is refused).
    Prints each task's phase and outputs; exit 0 when the workflow Succeeded, 1 when not.
    """

    def body() -> int:
        import time

        from champion.errors import ConfigError
        from champion.files import MARKER, claim
        from champion.workflow import local

        doc = local.load(path)
        secret_values = local.read_secrets(secrets) if secrets else {}
        claims = {k: Path(v).resolve() for k, v in local.pairs(volume, "--volume")}
        folder = (workdir or Path("workflow-runs") / f"{doc.get('metadata', {}).get('name', 'workflow')}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        if folder.is_dir() and any(p.name != MARKER for p in folder.iterdir()):
            raise ConfigError(f"--workdir {folder} already holds a run: choose a new or empty folder")
        claim(folder, "workflow-run")
        result = local.run(doc, folder, dict(local.pairs(param, "--parameter")), secret_values, claims, dict(local.pairs(env, "--env")), quiet)
        for task in result.tasks.values():
            outputs = " ".join(f"{k}={v}" for k, v in task.outputs.items())
            code = "" if task.exit_code is None else f"exit {task.exit_code}"
            cpu = f"cpu {task.cpu_seconds:.1f}s" if task.attempts else ""
            print("\t".join((task.name, task.phase, code, cpu, outputs or task.message)))
        _emit({"WORKFLOW": result.name, "WORKFLOW_PHASE": result.phase, "WORKFLOW_FOLDER": str(result.folder)}, None)
        return 0 if result.phase == "Succeeded" else 1

    _guard(body)


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (Kubernetes, Argo, kill) takes the same path as Ctrl-C: runs are closed, not left RUNNING.
    raise KeyboardInterrupt


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    main()
