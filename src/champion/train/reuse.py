"""Reuse: find a finished training identical to the one `champion run` is about to start.

Deterministic training on the same inputs gives the same weights and metrics, so training again only
costs time: Quality Gate 1 would judge exactly the same numbers. A training is identical when its
*fingerprint* is: the resolved config (seed and every training setting included), the data digest,
the code (the digest of champion's own source, the versions of the libraries that compute the
numbers and, inside a git checkout, its commit, which must be clean), the pretrained weights' content,
and the CPU model and thread settings (deterministic algorithms repeat their numbers only for the same
split of the work: one thread and two sum in different orders). Only configurations whose outcome is
a function of those get a fingerprint (`ineligible` and `unnamed_code` say why not). Outside a git
checkout the source digest alone names the code that trains: nothing else champion runs comes from
the working directory (the config, the data and a weights file enter by content).

A reused training is recorded as a new run of its own (`record_reuse`): a copy of the identical
run's params, tags, metrics and small artefacts that points at the same logged model, tagged
`reused_run_id`. The gate then judges that run as it would judge a retrained one, and the
identical run's own records (its gate report, its tags) are left as they were.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from champion.registry import integrity, tracking
from champion.config import Config
from champion import names

# MLflow (seconds to import) is imported inside `record_reuse`, the one function that needs it:
# `champion run` imports this module before it knows whether a training can be reused (and it times
# MLflow's import apart).

FINGERPRINT_TAG = names.FINGERPRINT
REUSED_TAG = names.REUSED_RUN_ID
# Libraries whose versions can change the numbers a training computes: the training itself, and the
# split's draw (numpy's seeded RandomState) and image decoding (Pillow), which a fresh cache entry depends on.
_LIBRARIES = ("torch", "torchvision", "lightning", "numpy", "pillow")
# Tags of the identical run that describe what happened to it afterwards, not the training:
# the reuse run gets its own gate and export records. Nor is it that run's workflow step or attempt.
_NOT_COPIED_TAG_PREFIXES = ("mlflow.", "gate1.", "gate2.", "export.", "int8.", FINGERPRINT_TAG, names.WORKFLOW_PREFIX, names.ATTEMPT)
# Artefacts of the identical run that belong to its own gate and card.
_NOT_COPIED_ARTIFACTS = (names.GATE1_REPORT, names.MODEL_CARD_DIR)


@dataclass(frozen=True)
class Identical:
    """A finished run whose training is identical to the one asked for."""

    run_id: str
    model_uri: str
    fingerprint: str


def ineligible(cfg: Config, checkpoint: Path | None = None) -> str | None:
    """Why this configuration's training can never be reused, or None when it can.

    Only a single-process, deterministic training of weights that cannot change under the same
    name gives the same model twice.
    """
    t = cfg.training
    if checkpoint is not None:
        return "--checkpoint evaluates given weights; there is no training to reuse"
    if not t.deterministic:
        return "training.deterministic is false: a rerun would not give the same model"
    if t.num_nodes != 1 or str(t.devices) not in ("1", "[0]") or os.environ.get("WORLD_SIZE", "1") != "1":
        return "training runs on several processes"
    if t.accelerator != "cpu":
        return f"training.accelerator is {t.accelerator}: only the CPU's model and libraries are part of a training's identity"
    if isinstance(cfg.model.pretrained, str) and cfg.model.pretrained.startswith("models:/"):
        return "model.pretrained names a registered model, whose weights can change under the same name"
    return None


def unnamed_code(git: dict[str, str]) -> str | None:
    """Why the code a training would run cannot be named, or None when it can.

    Outside a git checkout (commit `unknown`) champion's source digest names it. Inside one, a tree
    with uncommitted changes (or one `git status` could not read) holds code no commit names.

    Args:
        git: `tracking.git_tags()` of the working directory.
    """
    if git.get(names.GIT_COMMIT, "unknown") == "unknown":
        return None
    dirty = git.get(names.GIT_DIRTY)
    if dirty == "true":
        return "the working tree has uncommitted changes (git.dirty is true): no commit names the code"
    if dirty != "false":
        return "git could not read the working tree (git status failed): no commit names the code"
    return None


def fingerprint(cfg: Config, data_digest: str, git: dict[str, str]) -> str | None:
    """The identity of this training, or None when it cannot be established (see `ineligible`, `unnamed_code`).

    Args:
        cfg: the resolved config.
        data_digest: the prepared data's digest.
        git: `tracking.git_tags()` of the working directory: a dirty tree has no identity; outside a
            checkout (commit `unknown`) champion's source digest names the code.
    """
    if ineligible(cfg) is not None or unnamed_code(git) is not None:
        return None
    commit = git.get(names.GIT_COMMIT, "unknown")
    parts: dict[str, Any] = {
        "config": cfg.to_yaml(),
        "data_digest": data_digest,
        "champion_source": source_digest(),
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "python": platform.python_version(),
        # Deterministic algorithms give the same numbers for the same work split: a CPU of another
        # kind (other vector instructions) or another thread count sums in another order.
        "cpu": _cpu_model(),
        "threads": _thread_settings(),
    }
    if commit != "unknown":  # outside a checkout the source digest alone names the code
        parts["git_commit"] = commit
    pretrained = cfg.model.pretrained
    if isinstance(pretrained, str) and Path(pretrained).expanduser().is_file():
        # A weights file can be replaced under the same path: its content is part of the identity.
        parts["pretrained_sha256"] = integrity.file_sha256(Path(pretrained).expanduser())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def find_identical(experiment: str, model_name: str, key: str) -> Identical | None:
    """A FINISHED run of `experiment` with fingerprint `key` and a logged model that is still there.

    The run of `model_name`'s current champion is preferred when it is one of them (then Gate 1
    names it), else the newest. Runs that were themselves reuses carry no fingerprint and are never found.

    Raises:
        RegistryError: MLflow could not be reached.
    """
    c = tracking.client()
    with tracking.registry_errors(f"look up experiment {experiment!r}"):
        exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    with tracking.registry_errors(f"search experiment {experiment!r} for an identical training"):
        runs = c.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{FINGERPRINT_TAG}` = '{key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )
    runs = [r for r in runs if r.data.tags.get(names.MODEL_URI, "").startswith("models:/")]
    if not runs:
        return None
    champion = tracking.current_champion(model_name)
    runs.sort(key=lambda r: r.info.run_id != (champion.run_id if champion is not None else None))  # stable
    for run in runs:
        if _model_ready(run.data.tags[names.MODEL_URI]):
            return Identical(run.info.run_id, run.data.tags[names.MODEL_URI], key)
    return None


def _model_ready(model_uri: str) -> bool:
    """Whether the logged model `models:/<model_id>` exists and finished uploading."""
    model_id = model_uri.removeprefix("models:/")
    if "/" in model_id or "@" in model_id:
        return False  # a registry reference, not a logged model of the run
    with tracking.registry_errors(f"look up logged model {model_id}"):
        try:
            model = tracking.client().get_logged_model(model_id)
        except Exception as exc:
            if tracking.is_not_found(exc):
                return False
            raise
    return str(model.status) in ("READY", "LoggedModelStatus.READY")


def record_reuse(identical: Identical, cfg: Config) -> tuple[str, dict[str, float]]:
    """Record the reuse as a new FINISHED run of `cfg.experiment` named `cfg.model.name`.

    The new run holds the identical run's params, training tags, metric histories, dataset input
    and small artefacts (config, evaluation, class counts), the tag `reused_run_id`, and the tag
    `model_uri` of the identical run's logged model, so that Quality Gate 1 and the model card read
    it as they read a training run.

    Returns:
        The new run's id and its metrics (latest value of each).

    Raises:
        RegistryError: MLflow could not be read or written.
    """
    from mlflow.entities import LoggedModelInput, Metric, Param

    c = tracking.client()
    source_id = identical.run_id
    with tracking.registry_errors(f"read run {source_id} to reuse its training"):
        source = c.get_run(source_id)
        histories = {key: c.get_metric_history(source_id, key) for key in source.data.metrics}
    tags = {k: v for k, v in source.data.tags.items() if not k.startswith(_NOT_COPIED_TAG_PREFIXES)}
    tags |= {
        REUSED_TAG: source_id,
        names.MODEL_URI: identical.model_uri,
        "mlflow.note.content": f"Identical to run {source_id} (training fingerprint {identical.fingerprint[:12]}): "
        "its training was reused, not repeated.",
    }
    with tracking.registry_errors(f"record the reuse of run {source_id} in experiment {cfg.experiment!r}"):
        run = c.create_run(source.info.experiment_id, run_name=cfg.model.name, tags=tags)
        run_id = run.info.run_id
        try:
            c.log_batch(
                run_id,
                metrics=[Metric(m.key, m.value, m.timestamp, m.step) for ms in histories.values() for m in ms],
                params=[Param(k, v) for k, v in source.data.params.items()],
            )
            c.log_inputs(
                run_id, datasets=list(source.inputs.dataset_inputs), models=[LoggedModelInput(identical.model_uri.removeprefix("models:/"))]
            )
            _copy_artifacts(c, source_id, run_id)
        except BaseException:
            c.set_terminated(run_id, "FAILED")
            raise
        c.set_terminated(run_id, "FINISHED")
    return run_id, dict(source.data.metrics)


def _copy_artifacts(c: Any, source_id: str, run_id: str) -> None:
    """Every run artefact of the identical run except its own gate report and model card."""
    with tempfile.TemporaryDirectory(prefix="champion-reuse-") as tmp:
        for item in c.list_artifacts(source_id):
            if item.path in _NOT_COPIED_ARTIFACTS:
                continue
            local = c.download_artifacts(source_id, item.path, tmp)
            if item.is_dir:
                c.log_artifacts(run_id, local, item.path)
            else:
                parent = str(Path(item.path).parent)
                c.log_artifact(run_id, local, None if parent == "." else parent)


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """Digest of champion's own Python source (every module of the package): the code that trains,
    wherever it is installed. Read once per process (a few milliseconds)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform says, and the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{platform.machine()} {model or platform.processor()}".strip()


def _thread_settings() -> dict[str, Any]:
    """What torch's intra-op thread count follows (read without importing torch)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": usable, **{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"
