"""When the tracking server stops answering: epoch metrics that do not wait for it, and runs it could not close.

How long champion waits for a server is MLflow's own retry budget, which champion leaves as MLflow
sets it (`MLFLOW_HTTP_REQUEST_MAX_RETRIES` 7, `MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR` 2,
`MLFLOW_HTTP_REQUEST_BACKOFF_JITTER` 1, `MLFLOW_HTTP_REQUEST_TIMEOUT` 120 s): every request, uploads
included, is retried after 0, 4, 8, 16, 32, 64 and 120 s, so a server that is back within about four
minutes loses nothing (docs/production.md has the measurements). What the defaults do not do:

- keep training while the server is away. `EpochLog` sends each epoch's metrics from one background
  thread, in order; training goes on, and the epochs' metrics travel in the checkpoint too (see
  `champion.train.module.EpochMetrics`), so a run resumed after a longer outage logs what the server missed.
- end a run whose server is gone. A run that fails because the server stopped answering cannot
  record its own end, and would show RUNNING for ever. `end_run` tries briefly, and otherwise
  writes the run into a local journal (`$XDG_CACHE_HOME/champion/unclosed-runs/`); the next champion
  command on this machine that reaches that server records the end (`close_remembered`, called by
  `tracking.setup_tracking`), with the time the run really stopped. It closes the run only if it is
  still RUNNING under the same attempt (tag `champion.attempt`): a run resumed elsewhere meanwhile
  is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

from champion import files, names
from champion.registry.client import client, is_not_found, redact, registry_errors

# MLflow (seconds to import) is imported inside the functions that use it: `champion --help` and
# `champion serve` import this module.

ATTEMPT_TAG = names.ATTEMPT
JOURNAL_DIR = "unclosed-runs"
# This process's attempt at a run: a resumed run gets a new one, so a stale journal entry cannot close it.
ATTEMPT = uuid.uuid4().hex

# A run being given up on, or a journal entry being replayed, gets one quick try, not the full budget:
# the server has just failed (or may still be away), and the user is waiting for the error.
_BRIEF = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def attempt_tags() -> dict[str, str]:
    """Tags that mark a run as being trained by this process (see `end_run`)."""
    return {ATTEMPT_TAG: ATTEMPT}


class EpochLog:
    """Epoch metrics sent to MLflow by one background thread, in order, so that training never waits for
    the server: an outage shorter than MLflow's retry budget costs no training time and loses nothing.

    A batch that still failed after MLflow's retries is raised (as a RegistryError naming the server)
    at the next `submit` or at `wait`, so a longer outage stops the run within an epoch of being noticed.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._sent: list[tuple[int, Future]] = []

    def submit(self, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int) -> None:
        """Queue one epoch's metrics (timestamped now by the caller, not when they reach the server)."""
        from mlflow.entities import Metric

        self.raise_failed()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="champion-epoch-metrics")
        batch = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()]
        self._sent.append((step, self._pool.submit(client().log_batch, run_id, metrics=batch)))

    def raise_failed(self) -> None:
        """Raise the first batch that failed, if any finished with an error."""
        for step, future in self._sent:
            if future.done() and not future.cancelled() and future.exception() is not None:
                self._give_up()
                with registry_errors(f"log the metrics of epoch {step}"):
                    raise future.exception()  # type: ignore[misc]

    def wait(self) -> None:
        """Block until every batch is logged; raise the first that failed."""
        for step, future in self._sent:
            try:
                future.result()
            except Exception:
                self._give_up()
                with registry_errors(f"log the metrics of epoch {step}"):
                    raise
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._sent.clear()

    def _give_up(self) -> None:
        # Batches not yet started are dropped (their epochs are in the checkpoint; a resumed run logs them).
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


@contextlib.contextmanager
def brief_requests() -> Iterator[None]:
    """MLflow requests inside the block try once more at most, with a 10 s timeout (see `_BRIEF`)."""
    saved = {k: os.environ.get(k) for k in _BRIEF}
    os.environ.update(_BRIEF)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def end_run(status: str) -> None:
    """End the active run with `status` (FAILED, KILLED) after a failure, without waiting out a lost server.

    One brief try; when the store does not answer, the run goes into the journal and a note says so
    on stderr. The failure being handled is the caller's to raise: nothing here hides it.
    """
    import mlflow

    active = mlflow.active_run()
    if active is None:
        return
    run_id, ended = active.info.run_id, int(time.time() * 1000)
    try:
        with brief_requests():
            mlflow.end_run(status)  # pops the run first: this process is no longer in it, whatever follows
    except Exception as exc:  # noqa: BLE001 - recorded in the journal and said; the caller raises its own failure
        path = remember(run_id, status, ended)
        first = redact((str(exc).strip().splitlines() or [""])[0][:300])
        print(
            f"note: run {run_id} could not be marked {status} ({type(exc).__name__}: {first}); "
            f"the next champion command here that reaches {redact(mlflow.get_tracking_uri())} records it "
            f"(journal: {path}). Resume it with: champion train --resume --run-id {run_id}",
            file=sys.stderr,
            flush=True,
        )


def journal_dir() -> Path:
    return files.default_cache_dir() / JOURNAL_DIR


def remember(run_id: str, status: str, end_time_ms: int) -> Path:
    """Write the journal entry of a run whose end could not be recorded."""
    import mlflow

    entry = {"tracking_uri": redact(mlflow.get_tracking_uri()), "run_id": run_id, "status": status, "end_time": end_time_ms, "attempt": ATTEMPT}
    path = journal_dir() / f"{run_id}.json"
    files.atomic_write(path, json.dumps(entry, indent=1))
    return path


def close_remembered(tracking_uri: str) -> list[str]:
    """Record the end of the journal's runs on `tracking_uri` that are still RUNNING under their attempt.

    Costs nothing when the journal is empty. A server that still does not answer keeps its entries
    for a later command (and that command's own work reports the outage).

    Returns:
        The ids of the runs this call ended.
    """
    folder = journal_dir()
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written by another process (atomic_write renames), or not ours: not a run to close
        if isinstance(entry, dict) and entry.get("tracking_uri") == redact(tracking_uri):  # stored without credentials
            entries.append((path, entry))
    ended = []
    for path, entry in entries:
        try:
            with brief_requests():
                ended += _close(entry)
        except Exception:  # noqa: BLE001 - the server is still away: the entry stays for the next command
            return ended
        path.unlink(missing_ok=True)
    return ended


def _close(entry: dict[str, Any]) -> list[str]:
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        run = c.get_run(entry["run_id"])
    except MlflowException as exc:
        if is_not_found(exc):
            return []  # deleted since: nothing to close
        raise
    if run.info.status != "RUNNING" or run.data.tags.get(ATTEMPT_TAG) != entry["attempt"]:
        return []  # ended, or resumed by another attempt since: not ours to close any more
    c.set_terminated(entry["run_id"], entry["status"], end_time=int(entry["end_time"]))
    return [entry["run_id"]]
