"""The append-only event history of a registered model: policy changes and alias moves.

Each event is one MLflow run in the experiment `champion-events`, named `<kind>: <model>`, with
tags `model` and `event` (for searching) and every field logged as a param. MLflow params are
immutable (logging a different value for a key is refused by every store), so an event, once
written, cannot be rewritten through MLflow; a deleted event run is still listed, because
`history` reads deleted runs too. This works the same on a SQLite store and a tracking server,
and needs no table of our own.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass
from typing import Any

from champion import tracking

EVENTS_EXPERIMENT = "champion-events"

POLICY_STORED = "policy stored"
POLICY_CHANGED = "policy changed"
PROMOTION = "promotion"
VALIDATION = "validation"


@dataclass(frozen=True)
class Event:
    kind: str
    model: str
    user: str
    timestamp: str
    fields: dict[str, Any]
    event_id: str
    deleted: bool = False


def _experiment_id() -> str:
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


def record(model: str, kind: str, **fields: Any) -> str:
    """Append one event about registered model `model`; returns its id (the event run's id).

    Field values are stored as JSON, so `history` gives them back with their types.

    Raises:
        RegistryError: MLflow could not be reached; the event was not (fully) written.
    """
    from mlflow.entities import Param, RunTag

    now_ns = time.time_ns()
    header = {
        "model": model,
        "event": kind,
        "user": getpass.getuser(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ns / 1e9)),
        # Nanoseconds keep events written within one millisecond in order.
        "timestamp_ns": str(now_ns),
    }
    params = {**header, **{f"field.{k}": json.dumps(v, sort_keys=True) for k, v in fields.items()}}
    with tracking.registry_errors(f"record the {kind!r} event of {model!r} in experiment {EVENTS_EXPERIMENT!r}"):
        c = tracking.client()
        run = c.create_run(
            _experiment_id(), run_name=f"{kind}: {model}", start_time=now_ns // 1_000_000,
            tags={"model": model, "event": kind},
        )  # fmt: skip
        c.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()], tags=[RunTag("complete", "true")])
        c.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def history(model: str) -> list[Event]:
    """Every event of `model`, oldest first, including event runs someone deleted (marked so).

    The params are the record; the `model` tag only finds candidates, and an event whose params
    name another model (a tag edited afterwards) is not shown as this model's.
    """
    from mlflow.entities import ViewType

    with tracking.registry_errors(f"read the event history of {model!r}"):
        c = tracking.client()
        exp = c.get_experiment_by_name(EVENTS_EXPERIMENT)
        if exp is None:
            return []
        runs, token = [], None
        while True:
            page = c.search_runs(
                [exp.experiment_id], filter_string=f"tags.model = '{_quote(model)}'", run_view_type=ViewType.ALL,
                max_results=1000, page_token=token,
            )  # fmt: skip
            runs.extend(page)
            token = page.token
            if not token:
                break
    events = []
    for run in runs:
        p = run.data.params
        if p.get("model") != model or "timestamp_ns" not in p:
            continue  # not (or not fully) an event of this model
        fields = {k.removeprefix("field."): json.loads(v) for k, v in p.items() if k.startswith("field.")}
        events.append(
            Event(p["event"], model, p["user"], p["timestamp"], fields, run.info.run_id, run.info.lifecycle_stage == "deleted")
        )
    order = {r.info.run_id: int(r.data.params.get("timestamp_ns", 0)) for r in runs}
    return sorted(events, key=lambda e: order[e.event_id])


def _quote(value: str) -> str:
    return value.replace("'", "\\'")
