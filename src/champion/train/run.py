"""Train: fit a classifier with PyTorch Lightning and track everything in one MLflow run.

The run holds per-epoch metrics (step = epoch, counted from 0 as Lightning does), the resolved
config, git and data tags, the data set as an MLflow dataset input, final evaluation metrics and
the best checkpoint's model logged with `mlflow.pytorch.log_model(name="model")`.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from champion import evaluate, ingest, timings
from champion.registry import outage, tracking
from champion.train.checkpoints import PROVENANCE_KEY, check_unseen_validation, checkpoint_dir, claim_checkpoint_dir, provenance, read_checkpoint
from champion.train.cluster import check_hardware, cluster_environment, finish_together, is_global_zero, prepare_group
from champion.config import Config, TrainingConfig
from champion.errors import ChampionError, ConfigError, Interrupted
from champion.train.augment import BatchAugment
from champion.train.balance import balance_indices, class_weights
from champion.train.loader import batch_loader
from champion.preprocessing import Preprocessing
from champion.train.models import build_classifier
from champion.train.weights import check_approach, configure_trainable, freeze_batchnorm_stats, load_pretrained, param_groups
from champion import names

if TYPE_CHECKING:
    from lightning.fabric.plugins.environments import ClusterEnvironment

EVAL_BATCH = 1000


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    metrics: dict[str, float]


class LitClassifier(L.LightningModule):
    """The Lightning wrapper: loss, accuracy and optimiser around a plain `nn.Module` classifier."""

    def __init__(
        self, model: nn.Module, cfg: TrainingConfig, augment: BatchAugment | None = None,
        class_weights: torch.Tensor | None = None, own_loss: bool = False, approach: str = "baseline",
        provenance: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.provenance = provenance
        self.cfg = cfg
        self.own_loss = own_loss
        self.approach = approach
        self.augment = augment if augment is not None and augment.active else None
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Which data these weights trained on: export-only mode compares it with the data prepared
        # then, so that a checkpoint is never evaluated on images it was trained on.
        if self.provenance is not None:
            checkpoint[PROVENANCE_KEY] = self.provenance

    def train(self, mode: bool = True) -> "LitClassifier":
        super().train(mode)
        if mode:  # a frozen backbone keeps its BatchNorm statistics too, not only its weights
            freeze_batchnorm_stats(self.model)
        return self

    def _loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        x01 = evaluate.to_float(x)
        if self.augment is not None and batch_idx is not None:
            # Seeded by (seed, epoch, batch): a resumed run augments exactly as an uninterrupted one.
            g = torch.Generator(x01.device).manual_seed(hash((self.cfg.seed, self.current_epoch, batch_idx)) % 2**63)
            x01 = self.augment(x01, g)
        x01 = x01.contiguous(memory_format=self.memory_format)
        if self.own_loss:
            # Architectures with their own objective (capsnet: margin loss plus weighted reconstruction
            # of the un-normalised image).
            out = self.model.net.loss(self.model.normalize(x01), y, images01=x01)
            return out.total, out.scores, y
        logits = self.model(x01)
        if self.cfg.loss == "nll":
            return F.nll_loss(F.log_softmax(logits, 1), y, weight=self.class_weights), logits, y
        loss = F.cross_entropy(logits, y, weight=self.class_weights, label_smoothing=self.cfg.label_smoothing)
        return loss, logits, y

    def on_train_epoch_start(self) -> None:
        self.loss_sum, self.loss_count = torch.zeros(()), 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _, y = self._loss(batch, batch_idx)
        # Summed here rather than with self.log: the epoch's train loss is needed at validation end,
        # before Lightning aggregates its own epoch metrics.
        self.loss_sum += loss.detach().cpu() * len(y)
        self.loss_count += len(y)
        return loss

    def epoch_train_loss(self) -> float:
        return float(self.loss_sum / max(self.loss_count, 1))

    def on_validation_epoch_start(self) -> None:
        self.val_predictions: list[torch.Tensor] = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, logits, y = self._loss(batch)
        self.val_predictions.append(logits.argmax(1))  # the final report reuses the best epoch's (see _fit)
        # Batch-size-weighted means over the epoch: exactly the loss and accuracy of the whole split.
        self.log("val_loss", loss, on_epoch=True, batch_size=len(y), sync_dist=True)
        accuracy = (logits.argmax(1) == y).float().mean()
        self.log("val_accuracy", accuracy, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)

    def configure_optimizers(self):
        c = self.cfg
        params = param_groups(self.model, self.approach, c.learning_rate, c.backbone_lr_factor)
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=c.learning_rate, momentum=0.9, weight_decay=c.weight_decay)
        elif c.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        if c.scheduler == "none":
            return opt
        if c.scheduler == "onecycle":
            total = int(self.trainer.estimated_stepping_batches)
            # One peak per parameter group: fine_tuning keeps its lower backbone rate.
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in params], total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if c.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.epochs)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, c.epochs // 3), gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


@dataclass
class BestPredictions:
    """The validation predictions of the best epoch, in split order: what the final report would compute
    again from the same weights, on the same batches, in the same layout."""

    epoch: int
    predictions: np.ndarray


def _whole_split_predictions(trainer: L.Trainer, module: L.LightningModule) -> BestPredictions | None:
    # Under DDP each process validated its shard only; an architecture's own scores (capsnet) are not
    # logits, so the final report computes those itself. The report runs the model in float32 on the
    # CPU: the loop's predictions are its numbers only when the loop ran so too (no autocast, no GPU).
    if trainer.world_size != 1 or module.own_loss or not module.val_predictions:
        return None
    if str(trainer.precision) not in ("32-true", "32") or module.device.type != "cpu":
        return None
    return BestPredictions(trainer.current_epoch, torch.cat(module.val_predictions).cpu().numpy())


class EpochMetrics(L.Callback):
    """Logs the contract's per-epoch metrics to the active MLflow run with step = epoch.

    `best_val_accuracy` is the validation accuracy of the best epoch *by the checkpoint criterion*
    (`training.checkpoint.monitor`/`mode`): the epoch whose weights are logged as the model, so the
    gate judges the model that is registered, whatever the checkpoint monitors.

    Recorded at validation end, which Lightning runs before its checkpoint callbacks save, and sent
    from a background thread (`outage.EpochLog`), so that training does not wait for a tracking server
    that blips. Every epoch's metrics also travel in the checkpoint (`history`): a run resumed after
    the server stayed away too long logs the epochs it missed, so a resumed run neither loses nor
    repeats a step.
    """

    def __init__(self, monitor: str, mode: str, logged_steps: set[int] | None = None) -> None:
        self.monitor, self.mode = monitor, mode
        self.best_score = float("-inf") if mode == "max" else float("inf")
        self.best = float("nan")
        self.started = 0.0
        self.started_at, self.started_cpu = 0.0, 0.0  # wall clock and CPU time, for champion.timings
        self.best_predictions: BestPredictions | None = None  # of the best epoch, when this process saw them all
        # Epochs a resumed run already logged: killed after logging but before its checkpoint was
        # saved, an epoch is trained again (identically, when deterministic) but not logged twice.
        self.logged_steps = logged_steps or set()
        # step -> (timestamp ms, metrics) of every epoch so far; saved in the checkpoint.
        self.history: dict[int, tuple[int, dict[str, float]]] = {}
        self.sender = outage.EpochLog()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self.started_at, self.started_cpu = time.time(), time.process_time()
        # The rate this epoch trains with (per-epoch schedulers step before validation ends). The
        # last group is the head's: under fine_tuning the backbone's rate is a fraction of it.
        self.learning_rate = trainer.optimizers[0].param_groups[-1]["lr"]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import mlflow

        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        timings.record(f"epoch {trainer.current_epoch}", self.started_at, time.time(), time.process_time() - self.started_cpu)
        m = trainer.callback_metrics
        val_acc = float(m["val_accuracy"])
        score = float(m[self.monitor])
        # Ties go to the earlier epoch, as ModelCheckpoint keeps the first of equal scores.
        if (score > self.best_score) if self.mode == "max" else (score < self.best_score):
            self.best_score, self.best = score, val_acc
            self.best_predictions = _whole_split_predictions(trainer, pl_module)
        metrics = {
            "train_loss": pl_module.epoch_train_loss(),
            "val_loss": float(m["val_loss"]),
            "val_accuracy": val_acc,
            "best_val_accuracy": self.best,
            "epoch_time": time.perf_counter() - self.started,
            "learning_rate": self.learning_rate,
        }
        now = int(time.time() * 1000)
        self.history[trainer.current_epoch] = (now, metrics)
        if trainer.current_epoch in self.logged_steps:
            return
        self.sender.submit(mlflow.active_run().info.run_id, metrics, trainer.current_epoch, now)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import mlflow
        from mlflow.entities import Metric

        # Resumed from a checkpoint whose epochs the server never received (it was away): log them now.
        missing = [(s, t, m) for s, (t, m) in sorted(self.history.items()) if s not in self.logged_steps]
        if trainer.is_global_zero and missing:
            batch = [Metric(k, float(v), t, s) for s, t, m in missing for k, v in m.items()]
            with tracking.registry_errors("log the metrics of epochs the tracking server missed"):
                tracking.client().log_batch(mlflow.active_run().info.run_id, metrics=batch)
            self.logged_steps |= {s for s, _, _ in missing}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sender.wait()  # every epoch's metrics are on the server before the run goes on

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_score": self.best_score, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_score = state_dict["best"], state_dict["best_score"]
        self.history = dict(state_dict.get("history", {}))  # checkpoints from before it have none


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
    import mlflow

    from champion.progress import data_progress
    from champion.timings import stage

    check_approach(cfg.model.approach, cfg.model.pretrained, cfg.model.frozen_layers)
    check_hardware(cfg.training)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ChampionError(f"--checkpoint {checkpoint}: no such file; give a .ckpt written by champion train")
    # Seed before the data split, the model and the loaders are built, so a rerun is identical.
    L.seed_everything(cfg.training.seed, workers=True, verbose=False)
    env = cluster_environment()
    prepare_group(cfg.training, env)  # a launch that cannot form one group fails here, before any run
    worker = not is_global_zero(env)
    if resume_run_id is None and checkpoint is None:
        earlier = _earlier_try(cfg, worker)  # a retried workflow step: what its earlier try left
        if isinstance(earlier, TrainResult):
            return None if worker else earlier
        resume_run_id = earlier
    if data is None:
        with stage("ingest"), data_progress(quiet or worker) as report:
            data = ingest.prepare(cfg.data, cfg.training.seed, report)
    x_train, _ = data.split("train")
    pre = _preprocessing(data, x_train)
    train_idx = balance_indices(data.labels, data.splits["train"], cfg.data.balance, cfg.training.seed, data.num_classes)
    model = build_classifier(cfg.model.architecture, pre)
    _own_loss(model, cfg.training.loss)  # a loss that does not fit the architecture fails before any run starts
    weights = load_pretrained(model, cfg.model.pretrained, data.num_classes, classes=list(pre.classes))
    trainable = configure_trainable(model, cfg.model.approach, cfg.model.frozen_layers)
    # Built once here only to fail before any run starts when the approach does not fit the model.
    param_groups(model, cfg.model.approach, cfg.training.learning_rate, cfg.training.backbone_lr_factor)

    resume_from = None
    if resume_run_id:
        # Every rank checks (a read; only rank 0 ever writes to MLflow): were rank 0 alone to refuse,
        # the other ranks would wait for it in DDP's rendezvous until the timeout.
        _check_same_data(resume_run_id, data)
        resume_from = checkpoint_dir(cfg, resume_run_id) / "last.ckpt"
        if not resume_from.is_file():
            raise ChampionError(
                f"run {resume_run_id} has no checkpoint to resume from ({resume_from} is missing; "
                "the first epoch never finished). Start a new run instead."
            )
        if not worker:
            claim_checkpoint_dir(cfg, resume_run_id)
    saved, val_predictions = None, None
    if checkpoint is not None:
        saved = read_checkpoint(Path(checkpoint))
        check_unseen_validation(Path(checkpoint), saved, data)
    if worker:  # a DDP worker (rank > 0): train its shard; runs, metrics and models are rank 0's
        if saved is None:  # export-only trains nothing: there is no group to join
            _fit(cfg, model, data, train_idx, None, True, resume_from, env)
            finish_together()  # exits with rank 0 once its run is complete, or fails with it
        return None

    tracking.setup_tracking()
    with stage("start the run"), tracking.registry_errors(f"start a run in experiment {cfg.experiment!r}"):
        mlflow.set_experiment(cfg.experiment)
        # champion.attempt: which process trains the run now (outage.end_run closes only its own attempt).
        run = (
            mlflow.start_run(run_id=resume_run_id, tags=outage.attempt_tags()) if resume_run_id
            else mlflow.start_run(run_name=cfg.model.name, tags={**_step_tags(), **outage.attempt_tags()})
        )  # fmt: skip
    run_id = run.info.run_id
    try:
        if not resume_run_id:
            _log_inputs(cfg, data, train_idx, reusable=saved is None)
            _log_params_and_tags(
                {"params.trainable": trainable["trainable"], "params.frozen": trainable["frozen"]},
                {
                    "pretrained.origin": weights.origin,
                    "pretrained.head_replaced": str(weights.head_replaced).lower(),
                    "pretrained.tensors_loaded": weights.loaded,
                },
            )  # fmt: skip
        else:
            _drop_fingerprint(run_id)
        if saved is None:
            if not resume_run_id:
                claim_checkpoint_dir(cfg, run_id)
            with stage("fit"):
                best_path, seen = _fit(cfg, model, data, train_idx, run_id, quiet, resume_from, env)
            saved = read_checkpoint(Path(best_path))
            # Evaluate once: the validation loop already predicted the split with the best weights.
            if seen is not None and saved.get("epoch") == seen.epoch:
                val_predictions = seen.predictions
        else:
            best_path = str(Path(checkpoint).resolve())
            mlflow.set_tags({
                "export_only": "true",
                "checkpoint": best_path,
                "checkpoint.data_digest": saved[PROVENANCE_KEY]["data_digest"],
                "checkpoint.run_id": str(saved[PROVENANCE_KEY].get("run_id")),
            })  # fmt: skip
        _load_weights(model, saved.get("state_dict", saved), best_path, cfg)
        with stage("final evaluation"):
            # In the layout the weights trained in, as every validation epoch was: channels-last
            # convolutions take about half the time on CPU.
            metrics, evaluation = _final_metrics(model.eval(), data, val_predictions)
            # Back to the default layout: what is logged and exported should not depend on a training choice.
            model.to(memory_format=torch.contiguous_format)
            metrics |= _deployment_metrics(model, data)
        if checkpoint is not None:
            # Nothing was trained, so no epoch logged the gate's metric: the weights' own
            # validation accuracy is it, at step 0.
            metrics |= {"val_accuracy": evaluation["accuracy"], "best_val_accuracy": evaluation["accuracy"]}
        with stage("log results"):
            mlflow.log_dict(evaluation, names.EVALUATION_FILE)
            mlflow.log_dict(evaluate.class_metric_keys(data.classes), evaluate.CLASS_METRIC_KEYS_ARTIFACT)
        with stage("log model"):
            info = _log_model(model, pre, x_train)
            _log_final_metrics(run_id, metrics, info)
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


def _log_final_metrics(run_id: str, metrics: dict[str, float], info) -> None:
    """The final metrics (step 0), linked to the logged model, and the `model_uri` tag: one request.

    Logged after the model, not before: `log_model` links the run's step-0 metrics to the model by
    reading the history of every metric the run already has, one request per metric.
    """
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    with tracking.registry_errors(f"log the final metrics of run {run_id}"):
        tracking.client().log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0, model_id=info.model_id) for k, v in metrics.items()],
            tags=[RunTag("model_uri", info.model_uri)],
        )  # fmt: skip


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
    tracking.setup_tracking()
    if run_id is None:
        if not (experiment and model_name):
            raise ConfigError("resume needs a run id, or the experiment and model name to find the latest unfinished run")
        run_id = tracking.latest_unfinished_run(experiment, model_name)
    if tracking.get_run(run_id).info.status == "FINISHED":
        raise ChampionError(f"run {run_id} finished; there is nothing to resume (start a new run)")
    # The run's own config: a resumed run must train exactly what it started training.
    cfg = tracking.load_run_config(run_id)
    return train(cfg, quiet=quiet, resume_run_id=run_id)


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
    import mlflow

    from champion.train import reuse

    if reuse.FINGERPRINT_TAG in tracking.get_run(run_id).data.tags:
        with tracking.registry_errors(f"untag run {run_id}"):
            mlflow.MlflowClient().delete_tag(run_id, reuse.FINGERPRINT_TAG)


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str, cfg: Config) -> None:
    """Load a Lightning checkpoint's weights into the bare classifier, with a clear error if they do not fit."""
    try:
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix named
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ChampionError(
            f"checkpoint {path} does not fit model.architecture={cfg.model.architecture!r} on this data: {first}"
        ) from exc


def _own_loss(model: nn.Module, loss: str) -> bool:
    """Whether training uses the architecture's own objective; mismatches are configuration errors."""
    has_own = hasattr(model.net, "loss")
    if loss == "margin" and not has_own:
        raise ConfigError("training.loss=margin needs capsule lengths as scores: use model.architecture=capsnet")
    if has_own and loss in ("cross_entropy", "nll"):
        raise ConfigError(f"training.loss={loss} does not fit capsnet, whose scores are capsule lengths: use auto or margin")
    return has_own


def _preprocessing(data: ingest.Dataset, x_train: np.ndarray) -> Preprocessing:
    # Exact per-channel mean and std of the training split, in [0, 1] units, from a 256-bin
    # histogram per channel: one integer pass instead of float copies of the whole split.
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


@timings.timed("log inputs")
def _log_inputs(cfg: Config, data: ingest.Dataset, train_idx: np.ndarray, reusable: bool = True) -> None:
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    from champion.train import reuse

    # Params and tags are collected and sent together at the end: one request instead of five.
    params: dict[str, Any] = dict(cfg.flat())
    mlflow.log_text(cfg.to_yaml(), names.CONFIG_FILE)
    git = tracking.git_tags()
    # The identity of this training, by which `champion run` finds it instead of training it again;
    # none when the outcome is not a function of config, data and code (reuse.fingerprint).
    key = reuse.fingerprint(cfg, data.digest, git) if reusable else None
    tags = {
        **git,
        **({reuse.FINGERPRINT_TAG: key} if key else {}),
        "architecture": cfg.model.architecture,
        "approach": cfg.model.approach,
        "pretrained": str(cfg.model.pretrained).lower(),
        "frozen_layers": str(cfg.model.frozen_layers).lower(),
        names.DATA_DIGEST: data.digest,
        names.DATA_SOURCE: data.source,
    }  # fmt: skip
    params |= {f"data.{name}_size": len(idx) for name, idx in data.splits.items()}
    mlflow.log_dict({
        "classes": data.classes,
        "train_before_balancing": np.bincount(data.labels[data.splits["train"]], minlength=data.num_classes).tolist(),
        "train_after_balancing": np.bincount(data.labels[train_idx], minlength=data.num_classes).tolist(),
        "balance": cfg.data.balance,
    }, "data/class_counts.json")  # fmt: skip
    skipped = data.manifest.get("skipped", [])
    params["data.skipped_files"] = len(skipped)
    if skipped:
        mlflow.log_text("\n".join(skipped) + "\n", "data/skipped_files.txt")
    _log_params_and_tags(params, tags)
    # A MetaDataset records name, digest and source without copying the arrays into MLflow.
    dataset = MetaDataset(source=_dataset_source(data.source), name=Path(data.source).name, digest=data.digest)
    mlflow.log_input(dataset, context="training")


def _log_params_and_tags(params: dict[str, Any], tags: dict[str, Any]) -> None:
    """Params and tags of the active run in one request (MLflow splits more than 100 of either)."""
    import mlflow
    from mlflow.entities import Param, RunTag

    run_id = mlflow.active_run().info.run_id
    with tracking.registry_errors(f"log the params and tags of run {run_id}"):
        tracking.client().log_batch(
            run_id, params=[Param(k, str(v)) for k, v in params.items()], tags=[RunTag(k, str(v)) for k, v in tags.items()]
        )


def _dataset_source(source: str):
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if source == "digits":
        return CodeDatasetSource(tags={"loader": "sklearn.datasets.load_digits"})
    if source in ingest.DOWNLOADABLE:
        return CodeDatasetSource(tags={"loader": f"champion.download.fetch({source!r})"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": both readings are the same class
        return resolve_dataset_source(source)


def _fit(
    cfg: Config, model: nn.Module, data: ingest.Dataset, train_idx: np.ndarray, run_id: str | None, quiet: bool,
    resume_from: Path | None, env: "ClusterEnvironment",
) -> tuple[str, BestPredictions | None]:
    """Train; the best checkpoint's path, and the validation predictions of the best epoch when this
    process made them all (the final report then need not make them again)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")  # lightning 2.6 on torch 2.14
    # The run's checkpoint folder is never empty: it holds the run's ownership marker (checkpoints.py).
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    t = cfg.training
    # DDP workers have no run id: ModelCheckpoint broadcasts rank 0's folder to them.
    ckpt_dir = checkpoint_dir(cfg, run_id or "worker")
    train_loader = batch_loader(
        data.images, data.labels, train_idx, t.batch_size, shuffle=True, seed=t.seed, num_workers=cfg.data.num_workers
    )
    val_loader = batch_loader(data.images, data.labels, data.splits["val"], EVAL_BATCH, shuffle=False)
    weights = None
    if cfg.data.balance == "weighted":
        weights = torch.tensor(class_weights(data.labels[train_idx], data.num_classes), dtype=torch.float32)
    augment = BatchAugment(cfg.data.augment.hflip, cfg.data.augment.crop_scale)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, monitor=t.checkpoint.monitor, mode=t.checkpoint.mode,
        save_top_k=t.checkpoint.save_top_k, filename="best-{epoch}", save_last=True,
    )  # fmt: skip
    logged = {step for step, _ in tracking.metric_history(run_id, "val_accuracy")} if resume_from and run_id else set()
    callbacks: list[L.Callback] = [
        EpochMetrics(t.checkpoint.monitor, t.checkpoint.mode, logged),
        checkpoint,
        EarlyStopping(monitor=t.early_stopping.monitor, mode=t.early_stopping.mode, patience=t.early_stopping.patience),
    ]
    if not quiet:
        callbacks.append(RichProgressBar(refresh_rate=20, console_kwargs={"stderr": True}))
    trainer = L.Trainer(
        max_epochs=t.epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=t.precision, deterministic=t.deterministic, callbacks=callbacks, logger=False,
        enable_progress_bar=not quiet, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=ckpt_dir, use_distributed_sampler=False, plugins=[env],
    )  # fmt: skip
    module = LitClassifier(
        model, t, augment, weights, own_loss=_own_loss(model, t.loss), approach=cfg.model.approach,
        provenance=provenance(cfg, data, run_id),
    )  # fmt: skip
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None)
    return checkpoint.best_model_path, callbacks[0].best_predictions


def _final_metrics(
    model: nn.Module, data: ingest.Dataset, val_predictions: np.ndarray | None = None
) -> tuple[dict[str, float], dict]:
    """Accuracy metrics of the logged weights, and the validation report (`evaluation.json`).

    `val_predictions`: the validation split's predictions by these weights when training already made
    them (the best epoch's validation loop); otherwise they are computed here.
    """
    x_val, y_val = data.split("val")
    if val_predictions is not None and len(val_predictions) == len(y_val):
        pred = val_predictions
    else:
        pred = evaluate.predict_logits(model, x_val, EVAL_BATCH).argmax(1)
    confusion = evaluate.confusion_matrix(y_val, pred, data.num_classes)
    per_class = evaluate.per_class_accuracy(confusion)
    # Class names are folder names, and MLflow refuses many characters in metric keys: the keys are
    # sanitised, and the report keeps the original names with the mapping.
    keys = evaluate.class_metric_keys(data.classes)
    metrics = {keys[name]: float(a) for name, a in zip(data.classes, per_class)}
    if data.has("test"):
        x_test, y_test = data.split("test")
        metrics["test_accuracy"] = evaluate.accuracy(y_test, evaluate.predict_logits(model, x_test, EVAL_BATCH).argmax(1))
    report = {
        "classes": data.classes,
        "split": "val",
        "accuracy": evaluate.accuracy(y_val, pred),
        "per_class_accuracy": dict(zip(data.classes, per_class.tolist())),
        "confusion_matrix": confusion.tolist(),
    }
    return metrics, report


def _deployment_metrics(model: nn.Module, data: ingest.Dataset) -> dict[str, float]:
    """Size and batch-1 latency of the model as it is logged (default memory layout)."""
    first_val_image = data.images[data.splits["val"][:1]]
    return {
        "model_size_mb": evaluate.model_size_mb(model),
        "inference_time_ms": evaluate.inference_time_ms(model, evaluate.to_float(first_val_image)),
    }


def _log_model(model: nn.Module, pre: Preprocessing, x_train: np.ndarray):
    import mlflow
    import torchvision
    from mlflow.models import infer_signature

    example = evaluate.to_float(x_train[:2]).numpy()
    with torch.inference_mode():
        output = model(torch.from_numpy(example)).numpy()
    # Passing the requirements explicitly skips MLflow's inference of them (about 8 s).
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    # MLflow warns about pickle on every save; the choice is deliberate (see serialization_format below).
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    return mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(example, output),
        input_example=example[:1],
        pip_requirements=requirements,
        metadata={"preprocessing": pre.to_dict()},
        # MLflow's default "pt2" traces with the one-image example and fixes the batch size to 1;
        # the pickled module stays a real nn.Module (any batch size, fine-tunable).
        serialization_format="pickle",
    )


def _earlier_try(cfg: Config, worker: bool) -> TrainResult | str | None:
    """In a retried workflow step (champion.workflow.retry): the finished run of an earlier try (not
    trained again), the id of its unfinished run to resume, or None to start a new run."""
    from champion.train import retry

    found = retry.earlier_try(cfg.experiment, lambda run_id: (checkpoint_dir(cfg, run_id) / "last.ckpt").is_file(), write=not worker)
    if found is None or not found.finished:
        return None if found is None else found.run_id
    run = tracking.get_run(found.run_id)
    return TrainResult(found.run_id, run.data.tags.get("model_uri", ""), dict(run.data.metrics))


def _step_tags() -> dict[str, str]:
    """A new run's tags that tie it to its workflow step, so that a retry of the step finds it."""
    from champion.train import retry

    return retry.step_tags()
