"""MLflow plumbing shared by the stages: the tracking store, git tags, run look-ups, registry errors.

Nothing here runs at import time: the tracking URI is chosen when a command starts.
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from champion import names, progress
from champion.config import load_config
from champion.errors import ChampionError, ConfigError
from champion.names import CHAMPION_ALIAS, DEPLOY_ALIAS, PREVIOUS_ALIAS  # noqa: F401 - callers reach them as tracking.*
from champion.registry import outage
# The client layer, re-exported: the stages reach all of the registry's plumbing as tracking.*.
from champion.registry.client import (  # noqa: F401
    client, credential_error, is_not_found, model_versions, paged, redact, registered_models, registry_errors,
)

# MLflow is imported inside the functions that use it: `champion --help` and `champion serve` import
# this module, and MLflow takes seconds to import.

EXPORT_EXPERIMENT = "model-exports"


def setup_tracking(quiet: bool = False) -> str:
    """Use MLFLOW_TRACKING_URI when set, else a SQLite store in the working directory (registry included).

    The first call of a command names the store on stderr (`announce`).

    Args:
        quiet: Name the store only when it is a new one (--quiet).
    """
    import mlflow

    from champion.registry import auth  # lazy: it subclasses an MLflow class (MLflow loads with it)

    # The default is made absolute: MLflow caches stores by URI, so a relative path would keep
    # pointing at the first working directory for the life of the process.
    uri = tracking_uri()
    announce(uri, quiet)  # before MLflow creates the database file
    mlflow.set_tracking_uri(uri)
    auth.check_environment()  # a header that could not be sent fails here, not as a 401 mid-run
    auth.use_provider()  # MLflow hands every request to champion's AuthBase: the key, and no credential across origins
    # MLflow's per-download tqdm bars would drown our own progress; users can turn them back on.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # stdout carries only KEY=value lines; MLflow would print run links there when talking to a server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A server whose artefacts live in S3 offers presigned downloads, which MLflow 3 then uses for every
    # file, however small: two requests instead of one, and the client must reach the bucket itself.
    # Through the server, one request per file, and only the tracking server's address is needed.
    os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    outage.close_remembered(uri)  # runs an earlier command here could not end while this server was away
    return uri


def tracking_uri() -> str:
    """The store `setup_tracking` uses: MLFLOW_TRACKING_URI, else ./mlflow.db as an absolute SQLite URI."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


# The stores this process has named: once per command (the CLI forgets them when a command starts).
_ANNOUNCED: set[str] = set()


def forget_announced() -> None:
    """A new command starts: its store is named again."""
    _ANNOUNCED.clear()


def new_local_store(uri: str) -> bool:
    """Whether `uri` is a local SQLite store whose file does not exist yet (MLflow creates it on first use)."""
    if not uri.startswith("sqlite:///"):
        return False
    name = uri[len("sqlite:///") :].split("?")[0]
    return name not in ("", ":memory:") and not Path(name).exists()


def announce(uri: str, quiet: bool = False) -> None:
    """Name the tracking store on stderr (redacted), once per command; say so when it is created now.

    Running from another folder silently started a new, empty registry there: a new local store is
    named wherever stderr goes (logs too). An existing store is named on a terminal only, so that
    logs stay as they were. --quiet names none.
    """
    if uri in _ANNOUNCED:
        return
    _ANNOUNCED.add(uri)
    new = new_local_store(uri)
    if quiet or not (new or progress.console.is_terminal):
        return
    line = f"tracking store: {redact(uri)}"
    if new:
        line += (
            " (created now: there was no such file, so its registry starts empty; to use another store, "
            "set MLFLOW_TRACKING_URI or run from the folder that holds its mlflow.db)"
        )
    progress.console.print(line, markup=False, highlight=False, soft_wrap=True)


def registered_model(name: str, action: str | None = None):
    """The registered model `name`, or None when it does not exist (any other failure is a RegistryError,
    saying `action`)."""
    with registry_errors(action or f"look up registered model {name!r}"):
        try:
            return client().get_registered_model(name)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise


def model_version(name: str, alias: str | None = None, version: str | None = None, hint: str = ""):
    """The version of `name` that `version` (or else `alias`) names.

    Raises:
        ChampionError: no such registered model, alias or version; the message ends with `hint`.
        RegistryError: MLflow could not be reached (never read as "not found").
    """
    what = f"version {version}" if version else f"alias @{alias}"
    model = registered_model(name, f"look up {name!r} {what}")
    if model is None:
        raise ChampionError(f"there is no registered model {name!r}; {hint}")
    if not version:
        aliased = model.aliases.get(alias)
        if aliased is None:  # MLflow answers a missing alias with a generic error: ask plainly
            raise ChampionError(f"registered model {name!r} has no alias @{alias}; {hint}")
        version = str(aliased)
    with registry_errors(f"look up {name!r} version {version}"):
        try:
            return client().get_model_version(name, version)
        except Exception as exc:
            if is_not_found(exc):
                raise ChampionError(f"registered model {name!r} has no version {version}; {hint}") from None
            raise


def version_run_id(mv) -> str:
    """The run a registered version was registered for: its `run_id` tag (champion sets it on every
    version it registers), else MLflow's `run_id`. They differ for a reused training: MLflow fills
    `run_id` with the run that logged the model (the identical earlier run), the tag names the run
    the gate judged (the one that reused it)."""
    return mv.tags.get("run_id") or mv.run_id


def champion_number(model) -> str | None:
    """The number of the version `model` (a registered model, or None) holds `champion` on, if any."""
    version = None if model is None else model.aliases.get(CHAMPION_ALIAS)
    return None if version is None else str(version)


def current_champion(name: str):
    """The model version holding the `champion` alias, or None when there is none yet.

    Only "no such registered model" or "it has no champion alias" means no champion; any other
    failure (server down, database unreadable) is a RegistryError, never a silent "no champion".
    """
    action = f"look up the champion of {name!r}"
    version = champion_number(registered_model(name, action))
    if version is None:
        return None
    with registry_errors(action):
        return client().get_model_version(name, str(version))


def git_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """git.commit, git.branch and git.dirty of the working directory ('unknown' outside a repository,
    and git.dirty 'unknown' when `git status` fails: a tree that could not be read is never called clean)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {names.GIT_COMMIT: "unknown", names.GIT_BRANCH: "unknown", names.GIT_DIRTY: "unknown"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        names.GIT_COMMIT: commit,
        names.GIT_BRANCH: git("rev-parse", "--abbrev-ref", "HEAD") or "unknown",
        names.GIT_DIRTY: "unknown" if status is None else str(bool(status)).lower(),
    }


# (tracking URI, run id) -> the run's artefact root. A run's artefact location never changes, so a
# process looks it up once: reading an artefact by its `runs:/` URI would cost two more look-ups of
# the run and a search of its logged models before the download, on every read.
_ARTIFACT_ROOTS: dict[tuple[str, str], str] = {}


def get_run(run_id: str):
    """The run, or a clear error when the id is unknown (not a registry outage)."""
    import mlflow

    with registry_errors(f"look up run {run_id}"):
        try:
            run = client().get_run(run_id)
        except Exception as exc:
            if is_not_found(exc) or "not found" in str(exc).lower():
                raise ChampionError(f"run {run_id!r} does not exist in this tracking store; check --run-id") from None
            raise
    _ARTIFACT_ROOTS[(mlflow.get_tracking_uri(), run_id)] = run.info.artifact_uri
    return run


def _artifact_root(run_id: str) -> str:
    """The run's artefact root URI (looked up once per process; an unknown run is a clear error)."""
    import mlflow

    key = (mlflow.get_tracking_uri(), run_id)
    if key not in _ARTIFACT_ROOTS:
        get_run(run_id)
    return _ARTIFACT_ROOTS[key]


# (tracking URI, run id) -> the config tree the run logged. A run logs its config.yaml once, when it
# starts, so `champion run` reads it once for Gate 1, export and Gate 2 together.
_RUN_CONFIGS: dict[tuple[str, str], dict[str, Any]] = {}


def load_run_config(run_id: str, overrides: list[str] | None = None):
    """The resolved config a run logged as `config.yaml`, with optional `--set` overrides on top."""
    import mlflow

    key = (mlflow.get_tracking_uri(), run_id)
    if key not in _RUN_CONFIGS:
        tree = yaml.safe_load(read_artifact(run_id, names.CONFIG_FILE))
        if not isinstance(tree, dict):
            raise ConfigError(f"run {run_id} has no usable config.yaml")
        _RUN_CONFIGS[key] = tree
    return load_config(base=copy.deepcopy(_RUN_CONFIGS[key]), overrides=overrides)


def read_artifact(run_id: str, path: str) -> str:
    """The text of a small run artefact (config, reports), through MLflow's own loader."""
    import mlflow

    root = _artifact_root(run_id)
    with registry_errors(f"read {path} of run {run_id}"):
        return mlflow.artifacts.load_text(f"{root.rstrip('/')}/{path}")


def read_artifact_bytes(run_id: str, path: str) -> bytes:
    """The bytes of a run artefact file (a plot), downloaded into a temporary folder and read."""
    import tempfile

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    root = _artifact_root(run_id)
    with registry_errors(f"read {path} of run {run_id}"), tempfile.TemporaryDirectory(prefix="champion-artifact-") as tmp:
        return Path(get_artifact_repository(root).download_artifacts(path, dst_path=tmp)).read_bytes()


def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    """The paths of the run's artefacts directly under `path` (the root when None)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    root = _artifact_root(run_id)
    with registry_errors(f"list the artefacts of run {run_id}"):
        return [a.path for a in get_artifact_repository(root).list_artifacts(path)]


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    with registry_errors(f"read metric {key} of run {run_id}"):
        return sorted((m.step, m.value) for m in client().get_metric_history(run_id, key))


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    """Set several run tags in one request."""
    from mlflow.entities import RunTag

    with registry_errors(f"tag run {run_id}"):
        client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def latest_unfinished_run(experiment: str, run_name: str) -> str:
    """The newest run named `run_name` in `experiment` that did not finish (KILLED, FAILED or RUNNING)."""
    import mlflow

    with registry_errors(f"search experiment {experiment!r} for a run to resume"):
        runs = mlflow.search_runs(
            experiment_names=[experiment],
            filter_string=f"attributes.run_name = '{run_name}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
    if not runs:
        raise ChampionError(f"no unfinished run named {run_name!r} in experiment {experiment!r} to resume; give --run-id")
    return runs[0].info.run_id


# Tags shown for each run by `champion runs` (the rest are in the MLflow UI).
RUN_KEY_TAGS = (
    "architecture", "approach", names.DATA_DIGEST, names.GIT_COMMIT, names.GATE1_RESULT, names.GATE1_DECIDED_BY, names.GATE1_MODEL_VERSION,
    names.GATE2_RESULT, names.GATE2_MODEL_VERSION, names.EXPORT_RUN_ID,
)  # fmt: skip


def search_runs(
    experiment: str, filter_string: str = "", order_by: list[str] | None = None, max_results: int = 100
) -> list[dict[str, Any]]:
    """Runs of `experiment` matching MLflow's search syntax, one dict each (run id, name, status, start
    time in UTC, metrics, key tags).

    Raises:
        ConfigError: a malformed filter or order-by (MLflow's own message), or max_results < 1.
        ChampionError: no experiment `experiment`.
        RegistryError: MLflow could not be reached.
    """
    from mlflow.exceptions import MlflowException

    if max_results < 1:
        raise ConfigError(f"--max {max_results}: must be at least 1")
    c = client()
    with registry_errors(f"look up experiment {experiment!r}"):
        exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise ChampionError(f"there is no experiment {experiment!r} in this tracking store; check --experiment")
    with registry_errors(f"search the runs of experiment {experiment!r}"):
        try:
            order = order_by or ["attributes.start_time DESC"]
            runs = paged(c.search_runs, [exp.experiment_id], filter_string=filter_string, order_by=order, limit=max_results)
        except MlflowException as exc:
            if exc.error_code == "INVALID_PARAMETER_VALUE":
                raise ConfigError(f"--filter/--order-by: {exc.message}") from None
            raise

    def utc(ms: int | None) -> str | None:
        return None if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))

    return [
        {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "start_time": utc(r.info.start_time),
            "metrics": dict(sorted(r.data.metrics.items())),
            "tags": {k: r.data.tags[k] for k in RUN_KEY_TAGS if k in r.data.tags},
        }
        for r in runs
    ]
