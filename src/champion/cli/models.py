"""`champion runs` and `champion models`: searching runs, and the registered models' versions,
alias history, rollback and stored promotion policy (champion.registry)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from champion import names
from champion.cli.common import _emit, _resolve_config, app, guarded
from champion.cli.tables import print_table
from champion.errors import ChampionError
from champion.registry import history, policy, rollback, tracking

RUN_METRICS = ("best_val_accuracy", "test_accuracy")  # the columns `runs` shows of each run's metrics


def _run_row(r: dict) -> tuple[str, ...]:
    """One run of `tracking.search_runs` as a row of the `runs` table."""
    return (r["run_id"], r["run_name"] or "", r["status"], r["start_time"] or "",
            *(f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "" for k in RUN_METRICS),
            r["tags"].get(names.GATE1_RESULT, ""), r["tags"].get(names.GATE2_RESULT, ""), r["tags"].get(names.DATA_DIGEST, ""))  # fmt: skip


@app.command("runs")
@guarded
def runs(
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="Experiment to search (default: the config's `experiment`)."),
    filter_: str = typer.Option("", "--filter", help="MLflow search filter, e.g. \"metrics.test_accuracy > 0.99 and tags.gate1.result = 'passed'\"."),
    order_by: Optional[list[str]] = typer.Option(None, "--order-by", help="MLflow order-by clause, e.g. 'metrics.best_val_accuracy DESC'. Repeatable (default: newest first)."),
    max_results: int = typer.Option(100, "--max", help="At most this many runs."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> int:
    """Search runs with MLflow's filter syntax (mlflow.search_runs); a table, or JSON lines with --json."""
    tracking.setup_tracking()
    name = experiment or _resolve_config(None, None, None, None, None).experiment
    found = tracking.search_runs(name, filter_, order_by, max_results)
    if as_json:
        for row in found:
            print(json.dumps(row, sort_keys=True))
        return 0
    title = f"runs of {name!r}" + (f" where {filter_}" if filter_ else "")
    columns = ("run id", "name", "status", "started (UTC)", *RUN_METRICS, "gate1", "gate2", "data digest")
    # The id and the name in full (the id is what promote --run-id takes); the rest, least needed first, may go.
    drop = ("data digest", "started (UTC)", "gate2", "test_accuracy", "status", "gate1", "best_val_accuracy")
    print_table(title, columns, [_run_row(r) for r in found], full=("run id", "name"), drop=drop)
    return 0


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
@guarded
def models_list(name: Optional[str] = typer.Argument(None, help="Only this registered model.")) -> int:
    """Each registered model's versions: aliases, gate results, data digest, metric, created."""
    tracking.setup_tracking()
    rows = [
        (r["model"], r["version"], ", ".join(f"@{a}" for a in r["aliases"]), r["gate1"] or "", r["gate2"] or "",
         r["data_digest"] or "", r["metric"] or "", r["created"], "yes" if r["rolled_back"] else "")
        for r in history.overview(name)
    ]  # fmt: skip
    columns = ("model", "version", "aliases", "gate1", "gate2", "data digest", "metric", "created (UTC)", "rolled back")
    drop = ("data digest", "created (UTC)", "rolled back", "gate2", "gate1", "metric")  # least needed first
    print_table("registered models", columns, rows, full=("model", "version", "aliases"), drop=drop)
    return 0


@models_app.command("history")
@guarded
def models_history(
    name: str = typer.Argument(..., help="Registered model name (model.name; `<name>-onnx` works too)."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Only the events of this alias (e.g. champion, deploy)."),
) -> int:
    """The alias moves and policy changes of NAME, oldest first: when, reason, alias, from -> to, who, report."""
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
    drop = ("event", "host", "report", "who", "when (UTC, store clock)", "reason")  # least needed first
    title = f"history of {model!r}" + (f" @{alias}" if alias else "")
    print_table(title, columns, rows, full=("registered model", "alias", "from", "to"), drop=drop)
    return 0


@models_app.command("rollback")
@guarded
def models_rollback(
    name: str = typer.Argument(..., help="Registered model name (model.name; `<name>-onnx` works too; `<name>-onnx-int8` for the int8 model's deploy)."),
    alias: str = typer.Option(
        names.DEPLOY_ALIAS, "--alias", help="deploy (what is served, on <name>-onnx, or on <name>-onnx-int8 when named) or champion."
    ),
    to: Optional[str] = typer.Option(None, "--to", help="Version to move the alias to (default: its previous holder in the history)."),
) -> int:
    """Move an alias back to its previous holder (or --to VERSION); prints MODEL_VERSION.

    The target must have passed the gate the alias requires (champion: Gate 1, deploy: Gate 2, or the
    int8 gate on NAME-onnx-int8).
    Repeated rollbacks walk further back through earlier holders. Recorded as a `rollback` event;
    the version moved away from is tagged rolled_back=true.
    """
    tracking.setup_tracking()
    moved = rollback.rollback(name, alias, to)
    target = moved.event.registered_model
    print(f"rolled back @{alias} of {target}: v{moved.from_version} -> v{moved.to_version}", file=sys.stderr)
    _emit({"MODEL_VERSION": str(moved.to_version)}, None)
    if alias == names.DEPLOY_ALIAS:
        try:
            note = history.other_deploy(moved.event.model, target)
        except ChampionError as exc:  # the rollback is done and said; only the note could not be made
            note = f"could not check the other deployed model: {exc}"
        if note:
            print(f"note: {note}", file=sys.stderr)
    return 0


@models_app.command("policy")
@guarded
def models_policy(
    name: str = typer.Argument(..., help="Registered model name (model.name)."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Change a key, e.g. --set promotion_criteria.threshold=0.95 or --set export.atol=1e-4 "
        "(value read as YAML). Repeatable; recorded as a `policy changed` event.",
    ),  # fmt: skip
) -> int:
    """Show the promotion policy stored on NAME (the bar of Gate 1 and Gate 2), or change it with --set.

    Prints one `key=value` line per policy key (values as JSON, which --set reads back).
    """
    tracking.setup_tracking()
    if set_:
        old, now = policy.change(name, set_)
        for line in policy.changes(old, now):
            print(line, file=sys.stderr)
    else:
        now = policy.shown(name)
    for line in policy.lines(now):
        print(line)
    return 0
