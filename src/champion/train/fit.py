"""Fitting with Lightning: the loaders, callbacks and Trainer of one training, and what it leaves.

Every rank of a DDP group runs this; only rank 0 passes a run id (its callbacks log to that run).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from torch import nn

from champion import ingest
from champion.config import Config, TrainingConfig
from champion.registry import tracking
from champion.train.allocator import keep_freed_memory
from champion.train.augment import BatchAugment
from champion.train.balance import class_weights
from champion.train.checkpoints import ReplacingCheckpointIO, checkpoint_dir, provenance
from champion.train.loader import batch_loader
from champion.train.module import BestPredictions, EpochMetrics, LitClassifier, own_loss
from champion.train.report import EVAL_BATCH


def fit(
    cfg: Config, model: nn.Module, data: ingest.Dataset, train_idx: np.ndarray, run_id: str | None, quiet: bool,
    resume_from: Path | None, env: ClusterEnvironment,
) -> tuple[str, BestPredictions | None]:  # fmt: skip
    """Train; the best checkpoint's path, and the validation predictions of the best epoch when this
    process made them all (the final report then need not make them again)."""
    _quiet_lightning()
    keep_freed_memory()  # each step's buffers reused, not faulted in afresh (champion.train.allocator)
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
    logged = {step for step, _ in tracking.metric_history(run_id, "val_accuracy")} if resume_from and run_id else set()
    metrics, checkpoint, callbacks = _callbacks(t, ckpt_dir, logged, quiet)
    trainer = L.Trainer(
        max_epochs=t.epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=t.precision, deterministic=t.deterministic, callbacks=callbacks, logger=False,
        enable_progress_bar=not quiet, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=ckpt_dir, use_distributed_sampler=False, plugins=[env, ReplacingCheckpointIO()],
    )  # fmt: skip
    module = LitClassifier(
        model, t, augment, weights, own_loss=own_loss(model, t.loss), approach=cfg.model.approach,
        provenance=provenance(cfg, data, run_id),
    )  # fmt: skip
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None)
    return checkpoint.best_model_path, metrics.best_predictions


def _quiet_lightning() -> None:
    """Silence Lightning's notices that say nothing about this training."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")  # lightning 2.6 on torch 2.14
    # The run's checkpoint folder is never empty: it holds the run's ownership marker (checkpoints.py).
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def _callbacks(
    t: TrainingConfig, ckpt_dir: Path, logged: set[int], quiet: bool
) -> tuple[EpochMetrics, ModelCheckpoint, list[L.Callback]]:
    """The fit's callbacks, and among them the two whose results the fit returns.

    Args:
        logged: Epochs a resumed run already logged (`EpochMetrics` does not log them twice).
    """
    c = t.checkpoint
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, monitor=c.monitor, mode=c.mode, save_top_k=c.save_top_k, filename="best-{epoch}", save_last=True
    )
    metrics = EpochMetrics(c.monitor, c.mode, logged)
    stopping = t.early_stopping
    callbacks: list[L.Callback] = [
        metrics,
        checkpoint,
        EarlyStopping(monitor=stopping.monitor, mode=stopping.mode, patience=stopping.patience),
    ]
    if not quiet:
        callbacks.append(RichProgressBar(refresh_rate=20, console_kwargs={"stderr": True}))
    return metrics, checkpoint, callbacks
