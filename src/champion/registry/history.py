"""The registry's history: every alias move and policy change, as events that are never rewritten.

`move_alias` is the one function that moves an alias (`champion` and `previous_champion` by Gate 1,
`deploy` by Gate 2, any of them by `rollback`); `record` appends the event it and the policy
commands write. Each event is one MLflow run in the experiment `champion-events`, named
`<reason>: <registered model>@<alias>`, with tags `model`, `registered_model`, `alias`, `reason`
(for searching) and every field logged as a param. MLflow refuses to log a different value for an
existing param on every store, so an event, once written, cannot be rewritten through MLflow; a
deleted event run is still listed (marked deleted), because `events` reads deleted runs too.
Appending a run is not a read-modify-write of anything shared: concurrent writers never lose each
other's events.

Fields: `model` (the registered model that owns the policy; the `deploy` alias of `<model>-onnx`
is in `<model>`'s history), `registered_model` and `alias` (where the alias lives), `from_version`
(read inside `move_alias`, right before the move), `to_version`, `reason` (`gate1 passed`,
`gate2 passed`, `rollback`, `policy stored`, `policy changed`), `who` (the user the MLflow server
authenticated, else MLFLOW_TRACKING_USERNAME, else the OS user) with `who_source`, `host`, `when`
(milliseconds, on the tracking store's clock, see `_store_time`), `report_run_id` and
`report_path` (the gate report that decided), `detail.lease` (the lease ticket the move was made
under) and `detail.<key>` (JSON) for the rest.

Concurrent moves are serialised by the lease of the model (`champion.registry.lease`): `move_alias` takes the
`Lease` its caller holds and, right before it moves the alias, renews it and checks that it is still
this process's (fencing: a holder that stalled past the lease's ttl moves nothing). A caller holds
the lease from before it reads what it decides on until after the move: Gate 1 from its check that
the champion is still the one it compared against (else it compares again with the new one) to the
`previous_champion` move; Gate 2 from its check that the export's version is still the champion;
`rollback` for the whole of its read-check-move. So the champion a gate report names is the
`from_version` of the move it caused, and the events of one alias, in order, chain each move's
`to_version` to the next one's `from_version`.
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from champion.registry import lease as leases
from champion.registry import tracking
from champion.errors import ChampionError, RegistryError
from champion import names

# MLflow (seconds to import) is imported inside the functions that use it: `champion --help` imports
# this module (through champion.cli.models).

EVENTS_EXPERIMENT = "champion-events"
SCHEMA = "1"

GATE1_PASSED = "gate1 passed"
GATE2_PASSED = "gate2 passed"
INT8_PASSED = "int8 gate passed"  # the int8 gate's @deploy move on <name>-onnx-int8
ROLLBACK = "rollback"
POLICY_STORED = "policy stored"
POLICY_CHANGED = "policy changed"

# The gate a version must have passed (its version tag) to hold each alias that rollback moves.
ROLLBACK_ALIASES = {tracking.CHAMPION_ALIAS: names.GATE1_RESULT, tracking.DEPLOY_ALIAS: names.GATE2_RESULT}
# The registered models that hold `deploy` beside `<model>`, by suffix: the version tag a holder must
# carry and the report that judged it (the float ONNX model of Gate 2, the int8 one of the int8 gate).
DEPLOY_HOLDERS = {names.INT8_SUFFIX: (names.INT8_GATE_RESULT, names.INT8_REPORT), names.ONNX_SUFFIX: (names.GATE2_RESULT, names.GATE2_REPORT)}
ROLLED_BACK_TAG = names.ROLLED_BACK


@dataclass(frozen=True)
class Event:
    model: str
    reason: str
    registered_model: str
    alias: str | None
    from_version: str | None
    to_version: str | None
    who: str
    who_source: str
    host: str
    when_ms: int
    report_run_id: str | None = None
    report_path: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    event_id: str = ""
    deleted: bool = False

    @property
    def when(self) -> str:
        """`when` in UTC, ISO 8601 with milliseconds."""
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.when_ms / 1000)) + f".{self.when_ms % 1000:03d}Z"

    @property
    def report(self) -> str | None:
        """The deciding report as `runs:/<run id>/<path>`, when the event has one."""
        return f"runs:/{self.report_run_id}/{self.report_path}" if self.report_run_id else None


@dataclass(frozen=True)
class Moved:
    """What `move_alias` did: the version the alias left (None when it was unset) and the event."""

    from_version: str | None
    to_version: str | None
    event: Event


def move_alias(
    model: str,
    alias: str,
    to_version: str | None,
    reason: str,
    *,
    lease: leases.Lease,
    registered_model: str | None = None,
    report: tuple[str, str] | None = None,
    **details: Any,
) -> Moved:
    """Move `alias` of `registered_model` (default `model`) to `to_version` (None: remove it) and record it.

    The version the alias leaves is read here, right before the move, with `get_registered_model`
    (MLflow 3's search has returned models without their aliases), so the event names what the
    move really replaced. The caller holds `model`'s lease (`champion.lease.hold`); it is checked
    here, after that read and right before the move, so a holder that lost it moves nothing.

    Args:
        model: The registered model that owns the history (and the policy).
        alias: The alias to move.
        to_version: The version it moves to.
        reason: Why (`gate1 passed`, `gate2 passed`, `rollback`).
        lease: The lease of `model`, held by the caller.
        registered_model: Where the alias lives (`<model>-onnx` for `deploy`).
        report: (run id, artefact path) of the gate report that decided.
        details: More fields for the event (JSON-serialisable).

    Raises:
        LeaseLost: the lease expired before the move (nothing moved).
        RegistryError: MLflow could not be reached; the message says whether the alias moved.
    """
    if lease.model != model:
        raise ValueError(f"moving an alias of {model!r} needs {model!r}'s lease, not {lease.model!r}'s")
    target = registered_model or model
    c = tracking.client()
    actor(f"moving @{alias} of {target!r}")  # asked before the move, so that the event can name them once it is made
    with tracking.registry_errors(f"move @{alias} of {target!r} to v{to_version}"):
        before = c.get_registered_model(target).aliases.get(alias)
        lease.check()
        if to_version is None:
            if before is not None:
                c.delete_registered_model_alias(target, alias)
        else:
            c.set_registered_model_alias(target, alias, str(to_version))
    event = record(
        model, reason, registered_model=target, alias=alias, from_version=None if before is None else str(before),
        to_version=None if to_version is None else str(to_version), report=report, lease=lease.ticket, **details,
    )  # fmt: skip
    return Moved(event.from_version, event.to_version, event)


def record(
    model: str,
    reason: str,
    *,
    registered_model: str | None = None,
    alias: str | None = None,
    from_version: str | None = None,
    to_version: str | None = None,
    report: tuple[str, str] | None = None,
    **details: Any,
) -> Event:
    """Append one event to the history of `model` (the alias or policy change has just been made).

    Raises:
        RegistryError: MLflow could not be reached; the change was made but the event not (fully) written.
    """
    import mlflow
    from mlflow.entities import Param, RunTag

    target = registered_model or model
    action = f"record the {reason!r} event of {target!r} in experiment {EVENTS_EXPERIMENT!r} (the change itself was made)"
    with tracking.registry_errors(action):
        when_ms = _store_time(target)
        who, source = _who(mlflow.get_tracking_uri())
        event = Event(
            model=model, reason=reason, registered_model=target, alias=alias, from_version=from_version,
            to_version=to_version, who=who, who_source=source, host=socket.gethostname(), when_ms=when_ms,
            report_run_id=report[0] if report else None, report_path=report[1] if report else None, details=details,
        )  # fmt: skip
        params = {
            "schema": SCHEMA, "model": model, "registered_model": target, "alias": alias, "reason": reason,
            "from_version": from_version, "to_version": to_version, "who": who, "who_source": source,
            "host": event.host, "os_user": getpass.getuser(), "when": str(when_ms), "when_utc": event.when,
            "report_run_id": event.report_run_id, "report_path": event.report_path,
            # A tie-breaker for two events in the same millisecond of the store's clock.
            "client_time_ns": str(time.time_ns()),
            **{f"detail.{k}": json.dumps(v, sort_keys=True) for k, v in details.items()},
        }  # fmt: skip
        tags = {"model": model, "registered_model": target, "reason": reason, **({"alias": alias} if alias else {})}
        c = tracking.client()
        name = f"{reason}: {target}" + (f"@{alias}" if alias else "")
        run = c.create_run(_experiment_id(), run_name=name, start_time=when_ms, tags=tags)
        c.log_batch(
            # Every field is logged, an absent one as "": a param that was never logged could be added later.
            run.info.run_id, params=[Param(k, "" if v is None else v) for k, v in params.items()], tags=[RunTag("complete", "true")]
        )  # fmt: skip
        c.set_terminated(run.info.run_id, "FINISHED")
    return dataclasses.replace(event, event_id=run.info.run_id)


def events(model: str, alias: str | None = None, registered_model: str | None = None) -> list[Event]:
    """The events of `model` (optionally of one alias, of one registered model), oldest first, deleted ones marked.

    The params are the record; the tags only find candidates, and an event whose params name
    another model (a tag edited afterwards) is not shown as this model's.
    """
    from mlflow.entities import ViewType

    with tracking.registry_errors(f"read the event history of {model!r}"):
        c = tracking.client()
        exp = c.get_experiment_by_name(EVENTS_EXPERIMENT)
        if exp is None:
            return []
        runs = tracking.paged(c.search_runs, [exp.experiment_id], filter_string=f"tags.model = '{_quote(model)}'", run_view_type=ViewType.ALL)
    found = []
    for run in runs:
        event = _from_run(run)
        if event is None or event[1].model != model:
            continue  # not (or not fully) an event of this model
        if alias is not None and event[1].alias != alias:
            continue
        if registered_model is not None and event[1].registered_model != registered_model:
            continue
        found.append(event)
    return [e for _, e in sorted(found, key=lambda pair: pair[0])]


def _from_run(run) -> tuple[tuple[int, int], Event] | None:
    p = run.data.params
    deleted = run.info.lifecycle_stage == "deleted"
    if p.get("schema") != SCHEMA:
        return None
    try:  # a run someone else put in the experiment (or a torn write) must not break the history
        details = {k.removeprefix("detail."): json.loads(v) for k, v in p.items() if k.startswith("detail.")}
        event = Event(
            model=p["model"], reason=p["reason"], registered_model=p["registered_model"], alias=p.get("alias") or None,
            from_version=p.get("from_version") or None, to_version=p.get("to_version") or None, who=p["who"],
            who_source=p["who_source"], host=p["host"], when_ms=int(p["when"]), report_run_id=p.get("report_run_id") or None,
            report_path=p.get("report_path") or None,
            details=details, event_id=run.info.run_id, deleted=deleted,
        )  # fmt: skip
        return (event.when_ms, int(p["client_time_ns"])), event
    except (KeyError, ValueError):
        return None


def _store_time(registered_model: str) -> int:
    """Now, on the tracking store's clock: the registered model's `last_updated_timestamp`, stamped by the store.

    Setting an alias or a tag does not touch that timestamp in MLflow 3 (only description updates
    do), so the description is written back as it is, which makes the store stamp the time. A
    user's description edit in the few milliseconds between the two calls would be undone; champion
    itself never edits descriptions.
    """
    c = tracking.client()
    description = c.get_registered_model(registered_model).description
    return int(c.update_registered_model(registered_model, description or "").last_updated_timestamp)


def actor(doing: str) -> tuple[str, str]:
    """Who is acting on the current tracking server, and how we know (`_who`, asked once per process).

    Callers ask before they register or move anything, so that a server that cannot say fails the
    step before the registry changes, not between a registration and its alias move.

    Raises:
        RegistryError: the server was not reached, or answered with an error (nothing was changed).
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    with tracking.registry_errors(f"ask {uri} who is {doing} (nothing was changed)"):
        return _who(uri)


@functools.lru_cache(maxsize=8)
def _who(tracking_uri: str) -> tuple[str, str]:
    """Who is acting, and how we know: the user the MLflow server authenticated (it answers
    `/api/2.0/mlflow/users/current` only when it runs with authentication), else MLFLOW_TRACKING_USERNAME,
    else the OS user."""
    if tracking_uri.startswith(("http://", "https://")):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        # Only an answer decides: a server without authentication answers 404 (or, behind a proxy, a
        # page that is no user), and the fallbacks below say who. A server not reached, or one that
        # answers with a server error, raises (MLflow retries 429 and 5xx first: a transient failure in
        # workflow mode): an outage is never recorded as the OS user, and nothing is cached.
        resp = http_request(get_default_host_creds(tracking_uri), "/api/2.0/mlflow/users/current", "GET")
        if resp.status_code >= 500 or resp.status_code == 408:
            raise RegistryError(f"{tracking.redact(tracking_uri)} answered {resp.status_code} when asked who is acting; try again when it is back")
        if resp.status_code == 200:
            try:
                return str(resp.json()["user"]["username"]), "mlflow server"
            except (ValueError, KeyError, TypeError):
                pass  # a 200 that is not MLflow's answer (a proxy's page): no authenticated user
    if user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return user, "MLFLOW_TRACKING_USERNAME"
    return getpass.getuser(), "os user"


# Tracking URI -> id of the events experiment: an experiment keeps its id, so a process looks it up once
# (a `champion run` records three events).
_EXPERIMENT_IDS: dict[str, str] = {}


def _experiment_id() -> str:
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri not in _EXPERIMENT_IDS:
        _EXPERIMENT_IDS[uri] = _find_or_create_experiment()
    return _EXPERIMENT_IDS[uri]


def _find_or_create_experiment() -> str:
    from mlflow.exceptions import MlflowException

    c = tracking.client()
    found = c.get_experiment_by_name(EVENTS_EXPERIMENT)
    if found is not None:
        return found.experiment_id
    try:
        return c.create_experiment(EVENTS_EXPERIMENT)
    except MlflowException as exc:  # another process created it between our two calls
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return c.get_experiment_by_name(EVENTS_EXPERIMENT).experiment_id


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


# --- who holds what -------------------------------------------------------------------------------


def owner(name: str) -> str:
    """The model whose history holds `name`'s aliases: `x` for `x-onnx` and `x-onnx-int8` when `x` is a registered model."""
    suffix = names.deploy_suffix(name)
    if suffix and tracking.registered_model(name.removesuffix(suffix)) is not None:
        return name.removesuffix(suffix)
    return name


def other_deploy(model: str, target: str) -> str | None:
    """After @deploy of `target` moved: a note when the other model that holds `deploy` beside it
    (`<model>-onnx-int8` beside `<model>-onnx`, and the reverse) serves an export of another version
    of `model`. Rollback moves one alias of one registered model; this says what was left as it was."""
    ours = names.deploy_suffix(target)
    other = f"{model}{next(suffix for suffix in DEPLOY_HOLDERS if suffix != ours)}"
    found = tracking.registered_model(other, f"look up {other!r}")
    held = None if found is None else found.aliases.get(tracking.DEPLOY_ALIAS)
    if held is None:
        return None
    mine = tracking.model_version(target, alias=tracking.DEPLOY_ALIAS).tags.get(names.PARENT_MODEL_VERSION)
    theirs = tracking.model_version(other, version=str(held)).tags.get(names.PARENT_MODEL_VERSION)
    if mine == theirs:
        return None
    return (
        f"{other} @deploy is still v{held} (exported from {model} v{theirs}) while {target} @deploy now serves "
        f"{model} v{mine}; to move it too: champion models rollback {other}"
    )


# --- the registry at a glance ---------------------------------------------------------------------


def overview(name: str | None = None) -> list[dict[str, Any]]:
    """Every version of every registered model (or of `name`), newest model versions first within a
    model: aliases, gate results, data digest, metric, created (UTC), rolled back.

    Aliases are read with `get_registered_model` per model: MLflow 3's search can return them empty.
    """
    c = tracking.client()
    with tracking.registry_errors("list the registered models"):
        if name is not None:
            models = [m for m in [tracking.registered_model(name)] if m is not None]
            if not models:
                raise ChampionError(f"there is no registered model {name!r}; `champion models` lists them")
        else:
            models = tracking.registered_models()
        rows = []
        for m in sorted(models, key=lambda m: m.name):
            aliases: dict[str, list[str]] = {}
            for alias, version in c.get_registered_model(m.name).aliases.items():
                aliases.setdefault(str(version), []).append(alias)
            versions = tracking.model_versions(f"name = '{_quote(m.name)}'", f"list the versions of {m.name!r}")
            for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
                t = v.tags
                metric = f"{t[names.GATE1_METRIC]}={t[names.GATE1_VALUE]}" if names.GATE1_METRIC in t else None
                rows.append({
                    "model": m.name, "version": str(v.version), "aliases": sorted(aliases.get(str(v.version), [])),
                    "gate1": t.get(names.GATE1_RESULT), "gate2": t.get(names.GATE2_RESULT), "data_digest": t.get(names.DATA_DIGEST) or None,
                    "metric": metric, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.creation_timestamp / 1000)),
                    "rolled_back": t.get(ROLLED_BACK_TAG) == "true", "run_id": t.get("run_id") or v.run_id,
                })  # fmt: skip
    return rows
