"""What a training logs to its MLflow run, beyond the per-epoch metrics (`champion.train.module`).

At the start: the config, the data (a dataset input, class counts, skipped files), git and data tags,
params, and what pretrained weights were loaded. At the end: the validation report, the model, and
the final metrics linked to it. Every function logs to the active run, which rank 0 alone opens.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from champion import evaluate, ingest, names, timings
from champion.config import Config
from champion.preprocessing import Preprocessing
from champion.registry import tracking
from champion.train import reuse
from champion.train.checkpoints import PROVENANCE_KEY
from champion.train.weights import WeightsInfo

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo  # annotations only

# MLflow (seconds to import) and torchvision are imported inside the functions that use them: only
# global rank 0 logs, and the other DDP processes never need them.


@timings.timed("log inputs")
def log_inputs(cfg: Config, data: ingest.Dataset, train_idx: np.ndarray, reusable: bool = True) -> None:
    """The config, the data and the tags that identify this training, at the start of a new run.

    Args:
        train_idx: The training split's indices after balancing.
        reusable: Whether the training may carry a fingerprint (`champion.train.reuse`): not when it
            evaluates a given checkpoint instead of training.
    """
    import mlflow  # lazy: seconds to import; only rank 0 logs
    from mlflow.data.meta_dataset import MetaDataset

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
    _log_class_counts(data, train_idx, cfg.data.balance)
    skipped = data.manifest.get("skipped", [])
    params["data.skipped_files"] = len(skipped)
    if skipped:
        mlflow.log_text("\n".join(skipped) + "\n", "data/skipped_files.txt")
    log_params_and_tags(params, tags)
    # A MetaDataset records name, digest and source without copying the arrays into MLflow.
    dataset = MetaDataset(source=_dataset_source(data.source), name=Path(data.source).name, digest=data.digest)
    mlflow.log_input(dataset, context="training")


def _log_class_counts(data: ingest.Dataset, train_idx: np.ndarray, balance: str) -> None:
    """Images per class in the training split, before and after balancing (`data/class_counts.json`)."""
    import mlflow  # lazy: seconds to import; only rank 0 logs

    mlflow.log_dict({
        "classes": data.classes,
        "train_before_balancing": np.bincount(data.labels[data.splits["train"]], minlength=data.num_classes).tolist(),
        "train_after_balancing": np.bincount(data.labels[train_idx], minlength=data.num_classes).tolist(),
        "balance": balance,
    }, "data/class_counts.json")  # fmt: skip


def log_pretrained(trainable: dict[str, int], weights: WeightsInfo) -> None:
    """How many parameters train and which pretrained weights were loaded, at the start of a new run."""
    log_params_and_tags(
        {"params.trainable": trainable["trainable"], "params.frozen": trainable["frozen"]},
        {
            "pretrained.origin": weights.origin,
            "pretrained.head_replaced": str(weights.head_replaced).lower(),
            "pretrained.tensors_loaded": weights.loaded,
        },
    )  # fmt: skip


def log_params_and_tags(params: dict[str, Any], tags: dict[str, Any]) -> None:
    """Params and tags of the active run in one request (MLflow splits more than 100 of either)."""
    import mlflow  # lazy: seconds to import; only rank 0 logs
    from mlflow.entities import Param, RunTag

    run_id = mlflow.active_run().info.run_id
    with tracking.registry_errors(f"log the params and tags of run {run_id}"):
        tracking.client().log_batch(
            run_id, params=[Param(k, str(v)) for k, v in params.items()], tags=[RunTag(k, str(v)) for k, v in tags.items()]
        )


def _dataset_source(source: str) -> Any:
    """Where the data came from, as an MLflow dataset source: the loader for built-in sets, else the location."""
    from mlflow.data.code_dataset_source import CodeDatasetSource  # lazy: mlflow takes seconds to import
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if source == "digits":
        return CodeDatasetSource(tags={"loader": "sklearn.datasets.load_digits"})
    if source in ingest.DOWNLOADABLE:
        return CodeDatasetSource(tags={"loader": f"champion.download.fetch({source!r})"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": both readings are the same class
        return resolve_dataset_source(source)


def tag_export_only(best_path: str, saved: dict[str, Any]) -> None:
    """Tags of a run that trained nothing: the checkpoint it evaluated, and the data and run that made it."""
    import mlflow  # lazy: seconds to import; only rank 0 logs

    mlflow.set_tags({
        "export_only": "true",
        "checkpoint": best_path,
        names.CHECKPOINT_DATA_DIGEST: saved[PROVENANCE_KEY]["data_digest"],
        names.CHECKPOINT_RUN_ID: str(saved[PROVENANCE_KEY].get("run_id")),
    })  # fmt: skip


def log_evaluation(evaluation: dict, classes: list[str]) -> None:
    """The validation report (`evaluation.json`) and the metric key of each class name."""
    import mlflow  # lazy: seconds to import; only rank 0 logs

    mlflow.log_dict(evaluation, names.EVALUATION_FILE)
    mlflow.log_dict(evaluate.class_metric_keys(classes), evaluate.CLASS_METRIC_KEYS_ARTIFACT)


def log_model(model: nn.Module, pre: Preprocessing, x_train: np.ndarray) -> ModelInfo:
    """Log the classifier as the run's model (`name="model"`), with its preprocessing as metadata.

    Args:
        x_train: The training split; two of its images make the signature and the input example.
    """
    import mlflow  # lazy: seconds to import; only rank 0 logs
    import torchvision  # lazy: only its version is needed, and only here
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


def log_final_metrics(run_id: str, metrics: dict[str, float], info: ModelInfo) -> None:
    """The final metrics (step 0), linked to the logged model, and the `model_uri` tag: one request.

    Logged after the model, not before: `log_model` links the run's step-0 metrics to the model by
    reading the history of every metric the run already has, one request per metric.
    """
    from mlflow.entities import Metric, RunTag  # lazy: mlflow takes seconds to import

    now = int(time.time() * 1000)
    with tracking.registry_errors(f"log the final metrics of run {run_id}"):
        tracking.client().log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0, model_id=info.model_id) for k, v in metrics.items()],
            tags=[RunTag(names.MODEL_URI, info.model_uri)],
        )  # fmt: skip
