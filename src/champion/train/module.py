"""The Lightning side of a training: the module that wraps a classifier, and the callbacks of its fit.

`LitClassifier` adds loss, accuracy and optimiser to a plain `nn.Module` classifier (which is what
gets logged, so the model stays plain torch). `EpochMetrics` logs the per-epoch metrics to the
active MLflow run and remembers the best epoch's validation predictions (`BestPredictions`), which
the final report reuses instead of predicting the split again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from champion import evaluate, timings
from champion.config import TrainingConfig
from champion.errors import ConfigError
from champion.registry import outage, tracking
from champion.train.approach import freeze_batchnorm_stats, param_groups
from champion.train.augment import BatchAugment
from champion.train.checkpoints import PROVENANCE_KEY

# MLflow (seconds to import) is imported inside the callbacks that log: only a tracked fit, on global
# rank 0, needs it.


def own_loss(model: nn.Module, loss: str) -> bool:
    """Whether training uses the architecture's own objective; mismatches are configuration errors."""
    has_own = hasattr(model.net, "loss")
    if loss == "margin" and not has_own:
        raise ConfigError("training.loss=margin needs capsule lengths as scores: use model.architecture=capsnet")
    if has_own and loss in ("cross_entropy", "nll"):
        raise ConfigError(f"training.loss={loss} does not fit capsnet, whose scores are capsule lengths: use auto or margin")
    return has_own


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
        self.val_predictions.append(logits.argmax(1))  # the final report reuses the best epoch's (EpochMetrics)
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
        import mlflow  # lazy: seconds to import; only a tracked fit needs it

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
        import mlflow  # lazy: seconds to import; only a tracked fit needs it
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
