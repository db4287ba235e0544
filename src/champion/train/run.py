"""Train: fit a classifier with PyTorch Lightning and track everything in one MLflow run.

The run holds per-epoch metrics (step = epoch, counted from 0 as Lightning does), the resolved
config, git and data tags, the data set as an MLflow dataset input, final evaluation metrics and
the best checkpoint's model logged with `mlflow.pytorch.log_model(name="model")`.

This module is the stage's entry points (`train`, `resume`) and their steps, in the order they
run. The Lightning module and its callbacks are `champion.train.module`, the fit itself
`champion.train.fit`, the final evaluation `champion.train.report`, and what is logged besides the
per-epoch metrics `champion.train.mlflow_log`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import ClusterEnvironment
from torch import nn

from champion import ingest, names
from champion.config import Config, ModelConfig, TrainingConfig
from champion.errors import ChampionError, ConfigError, Interrupted
from champion.preprocessing import Preprocessing
from champion.progress import data_progress
from champion.registry import outage, tracking
from champion.timings import stage
from champion.train import mlflow_log, retry, reuse
from champion.train.balance import balance_indices
from champion.train.checkpoints import check_unseen_validation, checkpoint_dir, claim_checkpoint_dir, read_checkpoint
from champion.train.cluster import check_hardware, cluster_environment, finish_together, is_global_zero, prepare_group
from champion.train.fit import fit
from champion.train.models import build_classifier
from champion.train.module import own_loss
from champion.train.report import deployment_metrics, final_metrics
from champion.train.weights import WeightsInfo, check_approach, configure_trainable, load_pretrained, param_groups

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo  # annotations only


@dataclass
class TrainResult:
    """A finished training run: its id, its logged model, and its final metrics."""

    run_id: str
    model_uri: str
    metrics: dict[str, float]


@dataclass
class _Built:
    """What a training builds before any run starts, on every rank alike."""

    data: ingest.Dataset
    x_train: np.ndarray
    pre: Preprocessing
    train_idx: np.ndarray  # the training split's indices after balancing
    model: nn.Module
    weights: WeightsInfo
    trainable: dict[str, int]  # parameter elements that train and that are frozen


@dataclass
class _Start:
    """Where a training starts from: afresh, a resumed run's last checkpoint, or (export-only) a given checkpoint."""

    resume_run_id: str | None = None
    resume_from: Path | None = None  # the resumed run's last.ckpt
    checkpoint: Path | None = None  # export-only: evaluated and logged instead of training
    saved: dict[str, Any] | None = None  # the export-only checkpoint's contents


def train(
    cfg: Config, quiet: bool = False, resume_run_id: str | None = None, checkpoint: Path | None = None,
    data: ingest.Dataset | None = None,
) -> TrainResult | None:
    """Prepare the data, train, evaluate and log the best model in an MLflow run.

    With `resume_run_id`, training continues from that run's `last.ckpt` into the same run (see
    `resume`, which also finds the run and its config). With `checkpoint` (export-only), nothing is
    trained: that checkpoint's weights are evaluated on the validation split and logged as the run's
    model, provided the checkpoint records that it trained on the data prepared now (so the
    validation split is unseen). Under DDP every process trains its shard and only global rank 0
    talks to MLflow; the other ranks return None. `data`, when given, is what
    `ingest.prepare(cfg.data, cfg.training.seed)` returned (a caller that already prepared it).

    Raises:
        ChampionError: the accelerator is not on this machine; the data changed since the resumed run
            started; the checkpoint cannot be shown not to have trained on the validation split.
        DataError: the data source is unusable.
        RegistryError: MLflow could not be reached.
        Interrupted: Ctrl-C or SIGTERM; the run is marked KILLED and can be resumed.
    """
    _check_request(cfg, checkpoint)
    # Seed before the data split, the model and the loaders are built, so a rerun is identical.
    L.seed_everything(cfg.training.seed, workers=True, verbose=False)
    env = cluster_environment()
    prepare_group(cfg.training, env)  # a launch that cannot form one group fails here, before any run
    worker = not is_global_zero(env)
    if resume_run_id is None and checkpoint is None:
        earlier = _earlier_try(cfg, worker, quiet)  # a retried workflow step: what its earlier try left
        if isinstance(earlier, TrainResult):
            return None if worker else earlier
        resume_run_id = earlier
    if data is None:
        with stage("ingest"), data_progress(quiet or worker) as report:
            data = ingest.prepare(cfg.data, cfg.training.seed, report)
    built = _build(cfg.model, cfg.training, cfg.data.balance, data)
    start = _start(cfg, data, resume_run_id, checkpoint, worker)
    if worker:  # a DDP worker (rank > 0): train its shard; runs, metrics and models are rank 0's
        if start.saved is None:  # export-only trains nothing: there is no group to join
            fit(cfg, built.model, data, built.train_idx, None, True, start.resume_from, env)
            finish_together()  # exits with rank 0 once its run is complete, or fails with it
        return None
    return _train_in_run(cfg, built, start, quiet, env)


def resume(
    run_id: str | None = None, experiment: str | None = None, model_name: str | None = None, quiet: bool = False
) -> TrainResult | None:
    """Continue an unfinished training run from its `last.ckpt`, into the same MLflow run.

    The run trains with its own logged config (what it started training), not the caller's.

    Args:
        run_id: The run to continue; None: the newest unfinished run named `model_name` in `experiment`.
        experiment: Where to look for the run when `run_id` is None.
        model_name: The run name (`model.name`) to look for when `run_id` is None.
        quiet: No progress output.

    Raises:
        ConfigError: neither a run id nor an experiment and model name were given.
        ChampionError: no such run, it finished, it has no checkpoint, or the data changed since it started.
    """
    tracking.setup_tracking(quiet)
    if run_id is None:
        if not (experiment and model_name):
            raise ConfigError("resume needs a run id, or the experiment and model name to find the latest unfinished run")
        run_id = tracking.latest_unfinished_run(experiment, model_name)
    if tracking.get_run(run_id).info.status == "FINISHED":
        raise ChampionError(f"run {run_id} finished; there is nothing to resume (start a new run)")
    # The run's own config: a resumed run must train exactly what it started training.
    cfg = tracking.load_run_config(run_id)
    return train(cfg, quiet=quiet, resume_run_id=run_id)


def _check_request(cfg: Config, checkpoint: Path | None) -> None:
    """Refuse what cannot work before anything is prepared: the approach, the hardware, the checkpoint file."""
    check_approach(cfg.model.approach, cfg.model.pretrained, cfg.model.frozen_layers)
    check_hardware(cfg.training)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ChampionError(f"--checkpoint {checkpoint}: no such file; give a .ckpt written by champion train")


def _build(model_cfg: ModelConfig, t: TrainingConfig, balance: str, data: ingest.Dataset) -> _Built:
    """The preprocessing, the balanced training split and the model, pretrained weights loaded and frozen as asked.

    Everything that does not fit (the loss, the weights, the approach) fails here, before any run starts.
    """
    x_train, _ = data.split("train")
    pre = _preprocessing(data, x_train)
    train_idx = balance_indices(data.labels, data.splits["train"], balance, t.seed, data.num_classes)
    model = build_classifier(model_cfg.architecture, pre)
    own_loss(model, t.loss)
    weights = load_pretrained(model, model_cfg.pretrained, data.num_classes, classes=list(pre.classes))
    trainable = configure_trainable(model, model_cfg.approach, model_cfg.frozen_layers)
    # Built once here only to fail early when the approach does not fit the model.
    param_groups(model, model_cfg.approach, t.learning_rate, t.backbone_lr_factor)
    return _Built(data, x_train, pre, train_idx, model, weights, trainable)


def _start(
    cfg: Config, data: ingest.Dataset, resume_run_id: str | None, checkpoint: Path | None, worker: bool
) -> _Start:
    """Where this training starts from, checked against the data prepared now."""
    start = _Start(resume_run_id=resume_run_id, checkpoint=checkpoint)
    if resume_run_id:
        start.resume_from = _resume_checkpoint(cfg, resume_run_id, data, worker)
    if checkpoint is not None:
        start.saved = read_checkpoint(Path(checkpoint))
        check_unseen_validation(Path(checkpoint), start.saved, data)
    return start


def _resume_checkpoint(cfg: Config, run_id: str, data: ingest.Dataset, worker: bool) -> Path:
    """The `last.ckpt` a resumed run continues from; rank 0 claims the run's checkpoint folder."""
    # Every rank checks (a read; only rank 0 ever writes to MLflow): were rank 0 alone to refuse,
    # the other ranks would wait for it in DDP's rendezvous until the timeout.
    _check_same_data(run_id, data)
    path = checkpoint_dir(cfg, run_id) / "last.ckpt"
    if not path.is_file():
        raise ChampionError(
            f"run {run_id} has no checkpoint to resume from ({path} is missing; "
            "the first epoch never finished). Start a new run instead."
        )
    if not worker:
        claim_checkpoint_dir(cfg, run_id)
    return path


def _train_in_run(cfg: Config, built: _Built, start: _Start, quiet: bool, env: ClusterEnvironment) -> TrainResult:
    """Rank 0's part: open (or reopen) the run, fill it, and close it with how it ended."""
    import mlflow  # lazy: seconds to import; only rank 0 talks to MLflow

    run_id = _start_run(cfg.experiment, cfg.model.name, start.resume_run_id, quiet)
    try:
        metrics, info = _fill_run(cfg, built, start, run_id, quiet, env)
        finish_together()  # the other processes of a DDP group wait for this, and fail if it never comes
    except (KeyboardInterrupt, SystemExit) as exc:
        # Ctrl-C, or SIGTERM (Lightning raises SIGTERMException, a SystemExit): no run stays RUNNING.
        outage.end_run("KILLED")
        raise Interrupted(
            f"training interrupted; run {run_id} is marked KILLED. Resume it from its last completed epoch "
            f"with: champion train --resume --run-id {run_id}"
        ) from exc
    except BaseException:
        outage.end_run("FAILED")  # a server that went away: the end is recorded when it answers again
        raise
    mlflow.end_run("FINISHED")
    return TrainResult(run_id, info.model_uri, metrics)


def _start_run(experiment: str, run_name: str, resume_run_id: str | None, quiet: bool = False) -> str:
    """Start a new run, or reopen the resumed one; its id."""
    import mlflow  # lazy: seconds to import; only rank 0 talks to MLflow

    tracking.setup_tracking(quiet)
    with stage("start the run"), tracking.registry_errors(f"start a run in experiment {experiment!r}"):
        mlflow.set_experiment(experiment)
        # champion.attempt: which process trains the run now (outage.end_run closes only its own attempt).
        # A new run's step tags tie it to its workflow step, so that a retry of the step finds it.
        run = (
            mlflow.start_run(run_id=resume_run_id, tags=outage.attempt_tags()) if resume_run_id
            else mlflow.start_run(run_name=run_name, tags={**retry.step_tags(), **outage.attempt_tags()})
        )  # fmt: skip
    return run.info.run_id


def _fill_run(
    cfg: Config, built: _Built, start: _Start, run_id: str, quiet: bool, env: ClusterEnvironment
) -> tuple[dict[str, float], ModelInfo]:
    """Log the inputs, train (or take the export-only checkpoint), evaluate and log the model; its final metrics."""
    if not start.resume_run_id:
        mlflow_log.log_inputs(cfg, built.data, built.train_idx, reusable=start.saved is None)
        mlflow_log.log_pretrained(built.trainable, built.weights)
    else:
        _drop_fingerprint(run_id)
    if start.saved is None:
        saved, best_path, val_predictions = _fit_in_run(cfg, built, start, run_id, quiet, env)
    else:
        saved, best_path, val_predictions = start.saved, str(Path(start.checkpoint).resolve()), None
        mlflow_log.tag_export_only(best_path, saved)
    _load_weights(built.model, saved.get("state_dict", saved), best_path, cfg.model.architecture)
    metrics, evaluation = _evaluate(built.model, built.data, val_predictions)
    if start.checkpoint is not None:
        # Nothing was trained, so no epoch logged the gate's metric: the weights' own
        # validation accuracy is it, at step 0.
        metrics |= {"val_accuracy": evaluation["accuracy"], "best_val_accuracy": evaluation["accuracy"]}
    with stage("log results"):
        mlflow_log.log_evaluation(evaluation, built.data.classes)
    with stage("log model"):
        info = mlflow_log.log_model(built.model, built.pre, built.x_train)
        mlflow_log.log_final_metrics(run_id, metrics, info)
    return metrics, info


def _fit_in_run(
    cfg: Config, built: _Built, start: _Start, run_id: str, quiet: bool, env: ClusterEnvironment
) -> tuple[dict[str, Any], str, np.ndarray | None]:
    """Train into the run: the best checkpoint's contents and path, and its validation predictions
    when the validation loop made the same ones (the final report then need not make them again)."""
    if not start.resume_run_id:
        claim_checkpoint_dir(cfg, run_id)
    with stage("fit"):
        best_path, seen = fit(cfg, built.model, built.data, built.train_idx, run_id, quiet, start.resume_from, env)
    saved = read_checkpoint(Path(best_path))
    # Evaluate once: the validation loop already predicted the split with the best weights.
    if seen is not None and saved.get("epoch") == seen.epoch:
        return saved, best_path, seen.predictions
    return saved, best_path, None


def _evaluate(model: nn.Module, data: ingest.Dataset, val_predictions: np.ndarray | None) -> tuple[dict[str, float], dict]:
    """The final metrics and the validation report; the model is left in eval mode and the default layout."""
    with stage("final evaluation"):
        # In the layout the weights trained in, as every validation epoch was: channels-last
        # convolutions take about half the time on CPU.
        metrics, evaluation = final_metrics(model.eval(), data, val_predictions)
        # Back to the default layout: what is logged and exported should not depend on a training choice.
        model.to(memory_format=torch.contiguous_format)
        metrics |= deployment_metrics(model, data)
    return metrics, evaluation


def _check_same_data(run_id: str, data: ingest.Dataset) -> None:
    """Refuse to continue a run on data other than what it started on (one run, one data set)."""
    tracking.setup_tracking()
    started = tracking.get_run(run_id).data.tags.get(names.DATA_DIGEST)
    if started != data.digest:
        raise ChampionError(
            f"run {run_id} started on data with digest {started or '(none recorded)'}, but the data prepared now "
            f"from {data.source} has digest {data.digest}: the data changed since the run started, and resuming "
            "would train one run on two data sets. Restore the data the run started with and resume again, "
            "or start a new run (champion train without --resume)."
        )


def _drop_fingerprint(run_id: str) -> None:
    """A resumed run loses its training fingerprint: it is never found as identical to a training.

    Lightning's checkpoint holds no random-number state, and resuming seeds afresh, so a model with
    dropout or stochastic depth draws other masks after the resume than an uninterrupted training
    would: the same config, data and code, but not the same numbers.
    """
    import mlflow  # lazy: seconds to import; only rank 0 talks to MLflow

    if reuse.FINGERPRINT_TAG in tracking.get_run(run_id).data.tags:
        with tracking.registry_errors(f"untag run {run_id}"):
            mlflow.MlflowClient().delete_tag(run_id, reuse.FINGERPRINT_TAG)


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str, architecture: str) -> None:
    """Load a Lightning checkpoint's weights into the bare classifier, with a clear error if they do not fit."""
    try:
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix named
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ChampionError(
            f"checkpoint {path} does not fit model.architecture={architecture!r} on this data: {first}"
        ) from exc


def _preprocessing(data: ingest.Dataset, x_train: np.ndarray) -> Preprocessing:
    """The model's preprocessing: image size, channels, classes, and the training split's statistics.

    Exact per-channel mean and std of the training split, in [0, 1] units, from a 256-bin histogram
    per channel: one integer pass instead of float copies of the whole split.
    """
    values = np.arange(256) / 255
    mean, std = [], []
    for c in range(x_train.shape[1]):
        hist = _histogram(x_train[:, c].reshape(-1))
        m = float(hist @ values / hist.sum())
        mean.append(m)
        std.append(max(float(np.sqrt(hist @ (values - m) ** 2 / hist.sum())), 1e-3))
    h, w = x_train.shape[2:]
    return Preprocessing((int(h), int(w)), int(x_train.shape[1]), tuple(mean), tuple(std), tuple(data.classes))


def _histogram(values: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Counts of each uint8 value. np.bincount converts its input to int64 first: over a whole split
    at once that is an 8x copy (340 MB for MNIST, about 0.4 s); in cache-sized chunks it is not."""
    hist = np.zeros(256, np.int64)
    for start in range(0, len(values), chunk):
        hist += np.bincount(values[start : start + chunk], minlength=256)
    return hist


def _earlier_try(cfg: Config, worker: bool, quiet: bool = False) -> TrainResult | str | None:
    """In a retried workflow step (champion.train.retry): the finished run of an earlier try (not
    trained again), the id of its unfinished run to resume, or None to start a new run."""
    found = retry.earlier_try(
        cfg.experiment, lambda run_id: (checkpoint_dir(cfg, run_id) / "last.ckpt").is_file(), write=not worker, quiet=quiet or worker
    )
    if found is None or not found.finished:
        return None if found is None else found.run_id
    run = tracking.get_run(found.run_id)
    return TrainResult(found.run_id, run.data.tags.get(names.MODEL_URI, ""), dict(run.data.metrics))
