"""A retried `champion train` in a workflow continues, or closes, what its earlier try left.

Argo retries a step in a new pod, so the earlier try's process is gone but its MLflow run is not:
it may have finished (the failure came after), stopped with its last checkpoint on a volume, or
stopped with nothing to resume from (checkpoints on the pod's own disk). The step's runs carry the
tag `workflow.step_id` (from CHAMPION_WORKFLOW_STEP_ID, `<workflow uid>-train`), and a retry:

- returns the finished run of an earlier try: nothing is trained again;
- else resumes the newest unfinished run whose `last.ckpt` is still there, into the same run;
- marks every other unfinished run of the step FAILED with the tag `workflow.superseded=true`.

So a retried train never leaves a second live run beside the first.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Callable

from champion.registry import tracking
from champion.errors import ConfigError
from champion.workflow import mode
from champion import names

SUPERSEDED_TAG = names.WORKFLOW_SUPERSEDED


@dataclass(frozen=True)
class EarlierTry:
    run_id: str
    finished: bool


def step_tags() -> dict[str, str]:
    """Tags for a new training run: the workflow step it belongs to (none outside a workflow)."""
    key = _step_id()
    return {mode.STEP_TAG: key} if key else {}


def earlier_try(
    experiment: str, has_checkpoint: Callable[[str], bool], write: bool = True, quiet: bool = False
) -> EarlierTry | None:
    """What an earlier try of this workflow step left in `experiment` (see the module docstring).

    Args:
        experiment: The experiment the step's training runs go to.
        has_checkpoint: Whether a run's `last.ckpt` is still there to resume from.
        write: Mark superseded runs FAILED (False on DDP ranks other than 0, which only read).
        quiet: Do not name the tracking store (--quiet, and DDP ranks other than 0).

    Returns:
        The finished run, or the unfinished run to resume; None when a new run should start
        (no workflow step id, no earlier try, or nothing left to resume).

    Raises:
        ConfigError: CHAMPION_WORKFLOW_STEP_ID holds characters other than letters, digits, `.`, `_`, `-`.
        RegistryError: MLflow could not be reached.
    """
    key = _step_id()
    if key is None:
        return None
    tracking.setup_tracking(quiet)
    runs = _runs_of_step(experiment, key)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        run_id = finished[0].info.run_id
        _say(f"retried workflow step {key}: run {run_id} finished in an earlier try; it is this step's run (nothing is trained again)")
        return EarlierTry(run_id, True)
    resume = next((r.info.run_id for r in runs if has_checkpoint(r.info.run_id)), None)
    for run in runs:
        run_id = run.info.run_id
        if run_id == resume or run.data.tags.get(SUPERSEDED_TAG) == "true" or not write:
            continue
        with tracking.registry_errors(f"mark run {run_id} of an earlier try FAILED"):
            c = tracking.client()
            c.set_tag(run_id, SUPERSEDED_TAG, "true")
            if run.info.status != "FAILED":
                c.set_terminated(run_id, "FAILED")
        _say(f"retried workflow step {key}: run {run_id} of an earlier try has no checkpoint left to resume from; marked FAILED")
    if resume is not None:
        _say(f"retried workflow step {key}: resuming run {resume} from its last checkpoint")
        return EarlierTry(resume, False)
    return None


def _step_id() -> str | None:
    key = mode.step_id()
    if key is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,250}", key):
        raise ConfigError(f"{mode.STEP_ENV}={key!r}: use letters, digits, '.', '_' and '-' only (the template sets <workflow uid>-train)")
    return key


def _runs_of_step(experiment: str, key: str) -> list:
    """The step's runs in `experiment`, newest first, whatever their status."""
    c = tracking.client()
    with tracking.registry_errors(f"search experiment {experiment!r} for runs of workflow step {key}"):
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            return []
        return list(c.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{mode.STEP_TAG}` = '{key}'",
            order_by=["attributes.start_time DESC"], max_results=100,
        ))  # fmt: skip


def _say(message: str) -> None:
    # Always shown, even with --quiet: a retry changing runs must leave a trace in the step's log.
    print(message, file=sys.stderr, flush=True)
