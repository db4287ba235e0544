"""What every command module shares: the `app`, the guard that turns outcomes into exit codes, the
common options, `KEY=value` output and tables.

Nothing here imports torch, lightning, mlflow or onnxruntime: `champion --help` imports this module.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, ParamSpec

import typer

from champion.config import SEED_FLAGS, Config, describe_keys, load_config
from champion.errors import EXIT_ERROR, ChampionError
from champion.files import atomic_write, claim, no_room
from champion.registry.tracking import credential_error, redact
from champion.workflow import mode

app = typer.Typer(
    help="Train image classifiers, and ship only the ones that beat the champion.\n\n"
    "Exit codes: 0 success, 1 error, 2 usage or configuration error, 3 rejected by Quality Gate 1, "
    "4 rejected by Quality Gate 2, 5 some images unreadable (predict, evaluate), 6 accuracy under --fail-under (evaluate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")


@functools.cache  # three commands show it: described once
def _config_epilog() -> str:
    """The --help epilog of the commands that resolve a config: every key, and how the environment sets it."""
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

# Every KEY a command prints: the only names an `--output-files` folder from an earlier release holds.
OUTPUT_KEYS = frozenset({
    "RUN_ID", "RESULT", "DECIDED_BY", "MODEL_VERSION", "EXPORT_RUN_ID", "GATE2_RESULT", "ONNX_MODEL_VERSION",
    "MODEL_CARD", "DATA_DIGEST", "DATA_PATH", "TRAIN_SIZE", "VAL_SIZE", "TEST_SIZE", "SKIPPED",
    "TRITON_MODEL_DIR", "TRITON_MODEL_VERSION", "INT8_RESULT", "INT8_RUN_ID", "INT8_MODEL_VERSION",
    "PREDICTIONS", "IMAGES", "UNREADABLE", "ACCURACY", "ACCURACY_DROP", "EVALUATION_REPORT",
})  # fmt: skip


def defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The parameter defaults of library function `fn`, by name: options show the library's own values.

    Reading them from the signature keeps one source of truth: a default changed in the library
    changes the command's default (and its --help) with it.
    """
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def _emit(values: dict[str, str], output_files: Optional[Path]) -> None:
    """Print `KEY=value` lines on stdout and, with `--output-files`, write each as the file DIR/KEY."""
    for key, value in values.items():
        print(f"{key}={value}", flush=True)
    if output_files is not None:
        for key, value in values.items():
            atomic_write(output_files / key, str(value))


def _claim_outputs(output_files: Path) -> None:
    """Only a folder champion made (or one holding nothing but earlier output files) is written into:
    `--output-files .` must not overwrite a user's file that happens to be called RESULT."""
    claim(output_files, "outputs", adopt=lambda folder: all(p.is_file() and p.name in OUTPUT_KEYS for p in folder.iterdir()))
    # An earlier run's keys are not this run's: a rerun that stops earlier must not leave RESULT=failed
    # beside the old GATE2_RESULT=passed for an orchestrator to read.
    for stale in output_files.iterdir():
        if stale.name in OUTPUT_KEYS:
            stale.unlink()


def _guard(fn: Callable[[], int], output_files: Optional[Path] = None) -> None:
    """Run a command body: user-facing errors become one message and their exit code.

    The `--output-files` folder is claimed first: a folder that cannot be used must not cost a
    training run, nor hide the step's real outcome behind a late error.
    """
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
        # A credential refused mid-step (a token that expired) outside any registry_errors: still one message.
        if (refused := credential_error(exc, "complete this step")) is not None:
            print(f"error: {refused}", file=sys.stderr, flush=True)
            raise typer.Exit(EXIT_ERROR) from None
        # A full disk outside champion's own writers (those raise DiskFullError): one line, never a traceback.
        if (full := no_room(exc)) is not None:
            print(f"error: {full}", file=sys.stderr, flush=True)
            raise typer.Exit(mode.failure_code(exc, EXIT_ERROR, workflow)) from None
        print(redact(traceback.format_exc()), end="", file=sys.stderr, flush=True)  # never a URI's password
        raise typer.Exit(mode.failure_code(exc, EXIT_ERROR, workflow)) from None
    raise typer.Exit(mode.success_code(code, workflow))


def guarded(fn: Callable[P, int]) -> Callable[P, None]:
    """Make a command body that returns its exit code into a command run under `_guard`.

    `functools.wraps` keeps `fn`'s signature reachable (`__wrapped__`), which is where typer reads
    the options from. A parameter named `output_files` is the folder `_guard` claims first.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def command(*args: P.args, **kwargs: P.kwargs) -> None:
        output_files = signature.bind_partial(*args, **kwargs).arguments.get("output_files")
        _guard(lambda: fn(*args, **kwargs), output_files)

    return command


def _resolve_config(
    config: Optional[Path], overrides: Optional[list[str]], epochs: Optional[int], lr: Optional[float], batch: Optional[int]
) -> Config:
    """The config a command runs with: file, environment, `--set`, then the training shortcuts on top."""
    sets = list(overrides or [])
    for flag, value in (("epochs", epochs), ("learning_rate", lr), ("batch_size", batch)):
        if value is not None:
            sets.append(f"{SEED_FLAGS[flag]}={value}")
    # A config resolved afresh reads CHAMPION_<SECTION>__<KEY> variables; a logged run's config
    # (tracking.load_run_config: promote, export, validate, the training of --resume) never does.
    return load_config(config, sets, env=os.environ)

