"""The typed configuration tree: one pydantic model per section, with defaults, rules and descriptions.

Every key has a one-line description; `champion run --help` lists them from here, so this module is
the single source of truth for names, defaults and allowed values. Reading a tree from YAML, the
environment and `--set` is `champion.config.loading`'s job.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from champion import names
from champion.config.dotted import flatten

# Lightning's own names, copied so that loading a config does not import Lightning (seconds);
# tests/test_config.py compares them with AcceleratorRegistry, StrategyRegistry and the precision
# literal types, so they cannot drift. Syntax only: whether this machine has a GPU is checked when
# training starts, so a config for a GPU cluster still loads on a laptop.
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"]
Strategy = Literal[
    "auto", "ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true", "ddp_fork",
    "ddp_fork_find_unused_parameters_false", "ddp_fork_find_unused_parameters_true", "ddp_notebook",
    "ddp_notebook_find_unused_parameters_false", "ddp_notebook_find_unused_parameters_true", "ddp_spawn",
    "ddp_spawn_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true", "deepspeed",
    "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
    "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme", "fsdp", "fsdp_cpu_offload",
    "single_device", "single_tpu", "single_xla", "xla", "xla_debug",
]  # fmt: skip
Precision = Literal[
    "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
    "32-true", "64-true", "64", "32", "16", "bf16",
]  # fmt: skip


def _check_devices(v: Any) -> Any:
    """Lightning's `devices` syntax: n >= 1, -1 (all), unique indices as a list or "0,1", or auto."""
    if isinstance(v, bool):
        raise ValueError("must be a count, -1, a list of device indices, a comma string such as \"0,1\", or auto")
    if isinstance(v, int):
        if v == -1 or v >= 1:
            return v
        raise ValueError("a count must be >= 1, or -1 for all devices")
    if isinstance(v, list):
        indices = v
    elif isinstance(v, str):
        text = v.strip()
        if text in ("auto", "-1"):
            return text
        if "," not in text:
            if text.isdigit() and int(text) >= 1:
                return text
            raise ValueError('expected auto, "-1", a count >= 1, or comma-separated indices such as "0,1"')
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ValueError('comma-separated device indices must be integers >= 0, e.g. "0,1"')
        indices = [int(p) for p in parts]
    else:
        raise ValueError("must be a count, -1, a list of device indices, a comma string such as \"0,1\", or auto")
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        raise ValueError("device indices must be a non-empty list of integers >= 0")
    if len(set(indices)) != len(indices):
        raise ValueError("device indices must be unique")
    return v


class Section(BaseModel):
    # Unknown keys are errors, not silently ignored: a typo must never fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("digits-cnn", description="Registry name of the model; also the training run name.")
    architecture: str = Field(
        "mnist_cnn",
        description="mnist_cnn, resnet18, capsnet, or any torchvision classification model by name.",
    )
    approach: Literal["baseline", "feature_extraction", "fine_tuning"] = Field(
        "baseline", description="baseline (from scratch), feature_extraction or fine_tuning."
    )
    pretrained: bool | str = Field(
        False, description="false, or weights: a file path, a torchvision weights name, or models:/<name>@<alias>."
    )
    frozen_layers: Literal["backbone"] | None = Field(None, description="null, or backbone to freeze it.")

    @field_validator("name")
    @classmethod
    def _registry_safe(cls, v: str) -> str:
        if not v or any(c in v for c in "/:@ ") or v in (".", ".."):
            raise ValueError("must be non-empty, without '/', ':', '@' or spaces, and not '.' or '..' (it is an MLflow registry name and a folder name)")
        if suffix := names.deploy_suffix(v):
            raise ValueError(
                f"must not end in {suffix!r}: champion registers the exports of model X as X-onnx and X-onnx-int8, "
                f"so {v!r} would share the registry of model {names.base_name(v)!r}; choose another name"
            )
        return v

    @field_validator("pretrained")
    @classmethod
    def _no_true(cls, v: bool | str) -> bool | str:
        if v is True:
            raise ValueError("true is ambiguous: give a file path, a torchvision weights name or models:/<name>@<alias>")
        return v


# The direction of each metric a monitor may watch: higher accuracy is better, lower loss is.
MONITOR_MODES: dict[str, str] = {"val_accuracy": "max", "val_loss": "min"}
_MODE_DESCRIPTION = "Follows monitor when omitted (max for val_accuracy, min for val_loss); a value that disagrees is an error."


def _mode_follows_monitor(section: str, data: Any) -> Any:
    """Fill `mode` from `monitor`, or refuse a mode that would pick the worst epoch as the best."""
    if not isinstance(data, dict) or data.get("monitor", "val_accuracy") not in MONITOR_MODES:
        return data  # a bad monitor is reported by its own field
    monitor = data.get("monitor", "val_accuracy")
    direction = MONITOR_MODES[monitor]
    if data.get("mode") is None:
        return {**data, "mode": direction}
    if data["mode"] != direction:
        raise ValueError(
            f"training.{section}.mode={data['mode']} does not fit monitor={monitor} (better is {direction}): "
            f"set mode={direction} or leave mode out"
        )
    return data


class EarlyStoppingConfig(Section):
    monitor: Literal["val_accuracy", "val_loss"] = Field("val_accuracy", description="Metric watched for early stopping.")
    mode: Literal["max", "min"] = Field("max", description=_MODE_DESCRIPTION)
    patience: int = Field(3, ge=1, description="Epochs without improvement before stopping.")

    @model_validator(mode="before")
    @classmethod
    def _mode(cls, data: Any) -> Any:
        return _mode_follows_monitor("early_stopping", data)


class CheckpointConfig(Section):
    monitor: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy", description="Metric that picks the best checkpoint (the model that is logged)."
    )
    mode: Literal["max", "min"] = Field("max", description=_MODE_DESCRIPTION)
    save_top_k: int = Field(1, ge=1, description="How many best checkpoints to keep (last.ckpt is kept too, for resume).")
    dirpath: str = Field("checkpoints", description="Checkpoints go to <dirpath>/<run_id>/.")

    @model_validator(mode="before")
    @classmethod
    def _mode(cls, data: Any) -> Any:
        return _mode_follows_monitor("checkpoint", data)


class TrainingConfig(Section):
    epochs: int = Field(10, ge=1, description="Maximum number of epochs.")
    learning_rate: float = Field(0.001, gt=0, description="Peak learning rate.")
    batch_size: int = Field(64, ge=1, description="Training batch size.")
    loss: Literal["auto", "cross_entropy", "nll", "margin"] = Field(
        "auto", description="auto: the architecture's own (capsnet: margin + reconstruction), else cross_entropy."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="adam, adamw or sgd (with momentum 0.9).")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay of the optimizer.")
    backbone_lr_factor: float = Field(
        0.1, gt=0, le=1, description="fine_tuning: the backbone learns at learning_rate times this."
    )
    scheduler: Literal["none", "onecycle", "cosine", "step"] = Field(
        "none", description="Learning-rate schedule: none, onecycle, cosine or step."
    )
    seed: int = Field(42, description="Seed for the split, the weights and the batch order.")
    deterministic: bool = Field(True, description="Use deterministic algorithms, so reruns give identical metrics.")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    accelerator: Accelerator = Field("cpu", description="Lightning accelerator: cpu, gpu, cuda, mps, tpu or auto.")
    devices: int | list[int] | str = Field(
        1, description='Lightning devices: a count, -1 (all), a list of indices [0, 1], "0,1", or auto.'
    )
    strategy: Strategy = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, fsdp, deepspeed, ... (Lightning's names).")
    num_nodes: int = Field(1, ge=1, description="Lightning num_nodes, for DDP across machines.")
    precision: Precision = Field(
        "32-true", description="Lightning precision: 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true, ..."
    )
    channels_last: bool = Field(True, description="Train in channels-last memory layout (faster convolutions on CPU).")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, v: Any) -> Any:
        # YAML reads `precision: 16` as a number; Lightning's aliases are the same values as text.
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: Any) -> Any:
        return _check_devices(v)


class S3Config(Section):
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, ...); default: AWS_ENDPOINT_URL or AWS itself."
    )


class AugmentConfig(Section):
    hflip: bool = Field(False, description="Random horizontal flips (off for digits: a flipped 2 is no 2).")
    crop_scale: tuple[float, float] | None = Field(
        None, description="Random-resized-crop area range, e.g. [0.35, 1]; null for no crop."
    )

    @field_validator("crop_scale")
    @classmethod
    def _fraction_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1] <= 1:
            raise ValueError("must be [min, max] with 0 < min <= max <= 1")
        return v


class DataConfig(Section):
    source: str = Field(
        "digits",
        description="digits, mnist, fashion_mnist, imagenette, s3://bucket/prefix, or a local folder "
        "(class sub-folders, optionally split into train/ val/ test/, or the four MNIST IDX files).",
    )
    mirror: str | None = Field(None, description="Base URL to download mnist/fashion_mnist/imagenette from instead of the public mirrors.")
    checksums: dict[str, str] | None = Field(
        None, description="File name -> md5/sha256 overrides for a mirror with rebuilt files."
    )
    s3: S3Config = Field(default_factory=S3Config)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    image_size: tuple[int, int] = Field((28, 28), description="Height and width images are resized to.")
    channels: Literal[1, 3] = Field(1, description="1 (greyscale) or 3 (RGB).")
    validation_split: float = Field(0.2, gt=0, lt=1, description="Fraction of the training data held out for validation.")
    test_split: float = Field(
        0.0, ge=0, lt=1, description="Fraction held out as a test set when the source has no test split of its own."
    )
    balance: Literal["none", "undersample", "oversample", "weighted"] = Field(
        "none", description="Class balancing of the training split."
    )
    on_error: Literal["fail", "skip"] = Field("fail", description="Unreadable images: fail (listing them) or skip.")
    max_skipped_fraction: float = Field(
        0.05, ge=0, le=1, description="With on_error=skip, fail anyway when more than this fraction is unreadable."
    )
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="Images with more pixels are refused (decompression-bomb guard; Pillow's default)."
    )
    resize: Literal["shorter_side", "stretch"] = Field(
        "shorter_side", description="shorter_side: fit the shorter side, then centre-crop (torchvision Resize+CenterCrop); stretch: exact size."
    )
    memory_budget_mb: float = Field(
        4096, gt=0, description="Cached images larger than this are memory-mapped instead of loaded into memory."
    )
    num_workers: int = Field(0, ge=0, description="Loader worker processes (0: batches are sliced in-process).")
    cache_dir: str | None = Field(
        None, description="Where prepared data is cached (default: $XDG_CACHE_HOME/champion or ~/.cache/champion)."
    )

    @field_validator("image_size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 8:
            raise ValueError("both sides must be at least 8 pixels")
        return v

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> "DataConfig":
        if self.validation_split + self.test_split >= 0.9:
            raise ValueError("validation_split + test_split must leave at least 10% for training")
        return self


class PromotionConfig(Section):
    metric: Literal["best_val_accuracy"] = Field("best_val_accuracy", description="Metric compared with the champion.")
    threshold: float = Field(0.90, ge=0, le=1, description="Minimum value of the metric (a fraction).")
    min_improvement: float = Field(0.005, ge=0, le=1, description="Required gain over the champion (a fraction).")
    min_per_class_accuracy: float | None = Field(None, ge=0, le=1, description="Floor for every class's accuracy.")
    max_model_size_mb: float | None = Field(None, gt=0, description="Largest allowed model size in MB.")
    max_inference_time_ms: float | None = Field(None, gt=0, description="Largest allowed batch-1 CPU latency in ms.")


class Int8Config(Section):
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1,
        description="int8 gate: the most validation accuracy the int8 model may lose against the float ONNX model (a fraction; stored in the model's policy).",
    )  # fmt: skip
    calibration_samples: int = Field(
        256, ge=1, description="Training images (never validation ones) that calibrate the int8 activation ranges."
    )
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How activation ranges are read from the calibration images (ONNX Runtime's CalibrationMethod)."
    )
    per_channel: bool = Field(True, description="Quantize weights per output channel (more accurate, a little slower).")
    calibration_source: str | None = Field(
        None,
        description="Calibrate on every image of this source (data.source syntax, e.g. images like those served) instead of the training split; null: the training split.",
    )


class ExportConfig(Section):
    formats: list[Literal["onnx", "torchscript", "onnx_int8"]] = Field(
        ["onnx"], description="Formats to export: onnx, torchscript, onnx_int8 (static int8 quantization of the ONNX model, with its own gate)."
    )
    opset: int = Field(17, ge=9, le=23, description="ONNX opset version.")
    atol: float = Field(1e-5, ge=0, description="Absolute tolerance of the parity check.")
    rtol: float = Field(1e-3, ge=0, description="Relative tolerance of the parity check.")
    num_samples: int = Field(100, ge=1, description="Validation images (and as many random inputs) compared.")
    batch_sizes: list[int] = Field([1, 16], min_length=1, description="Batch sizes the parity check runs at.")
    int8: Int8Config = Field(default_factory=Int8Config)


class TrackingConfig(Section):
    artifact_location: str | None = Field(
        None,
        description="Shared storage for exported ONNX models (an absolute folder, file:///path or s3://bucket/prefix): "
        "written there once, registered by reference, hash-checked before use; null: the export run's artefacts.",
    )

    @field_validator("artifact_location")
    @classmethod
    def _shared_location(cls, v: str | None) -> str | None:
        # Every step reads this from the training run's logged config, in other folders and containers:
        # a relative path would point somewhere else in each of them.
        if v is None:
            return v
        v = v.rstrip("/") or "/"
        if v.startswith("s3://"):
            if not v[len("s3://") :].split("/")[0]:
                raise ValueError("an s3:// location needs a bucket: s3://bucket/prefix")
            return v
        path = v[len("file://") :] if v.startswith("file://") else v
        if ("://" in v and not v.startswith("file://")) or not path.startswith("/"):
            raise ValueError("must be an absolute folder path, file:///path or s3://bucket/prefix")
        return v


class Config(Section):
    experiment: str = Field("champion", description="MLflow experiment of the training runs.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    promotion_criteria: PromotionConfig = Field(default_factory=PromotionConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys and values, as logged to MLflow params."""
        return flatten(self.model_dump(mode="json"))
