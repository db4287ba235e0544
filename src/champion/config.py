"""The typed configuration tree: YAML files, `CHAMPION_<SECTION>__<KEY>` environment variables,
`--set dotted.key=value` overrides, one validation pass.

Every key has a one-line description; `champion run --help` lists them from here, so this file is
the single source of truth for names, defaults and allowed values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic_core import to_jsonable_python
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from champion.errors import ConfigError


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
        if not v or any(c in v for c in "/:@ "):
            raise ValueError("must be non-empty, without '/', ':', '@' or spaces (it is an MLflow registry name)")
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


SEED_FLAGS = {"epochs": "training.epochs", "learning_rate": "training.learning_rate", "batch_size": "training.batch_size"}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections to dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where an unknown key was found, for the error message."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _format(error: ValidationError, origins: Mapping[str, str] | None = None) -> str:
    """One line per error; a key the environment set is prefixed with the variable that set it."""
    lines = []
    for e in error.errors():
        loc = tuple(p for p in e["loc"])
        key = ".".join(str(p) for p in loc) or "(root)"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_section_keys(loc))
            line = f"{key}: unknown key (allowed here: {allowed})"
        else:
            line = f"{key}: {e['msg']} (got {e.get('input')!r})"
        # A section's own rule (e.g. the splits must leave training data) is blamed on every
        # variable that set a key inside it, and a bad list item on the variable that set the list.
        named = [v for k, v in (origins or {}).items() if k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.")]
        lines.append(f"{', '.join(sorted(named))}: {line}" if named else line)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, origin: str | None = None) -> None:
    """Set `value` at a dotted path of a nested dict, creating sections on the way.

    Args:
        origin: What set the key, for the error message (default: `--set <dotted>`).
    """
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin or f'--set {dotted}'}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _read_value(raw: str, origin: str) -> Any:
    """A value as `--set` and the environment give it: YAML, so `[64,64]`, `3` and `false` get their types."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: value is not valid YAML ({exc})") from exc


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as YAML, so `[64,64]`, `3` and `false` get their types."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set training.epochs=3")
    return key.strip(), _read_value(raw, f"--set {text!r}")


# Config from the environment, as containers are configured: CHAMPION_<SECTION>__<KEY>, deeper
# sections joined by `__` as well; a top-level key such as `experiment` is CHAMPION_EXPERIMENT.
# These are pydantic-settings' conventions (env_prefix, env_nested_delimiter, names in any case).
ENV_PREFIX = "CHAMPION_"
ENV_DELIMITER = "__"


def env_variable(dotted: str) -> str:
    """The environment variable that sets a key: training.early_stopping.patience -> CHAMPION_TRAINING__EARLY_STOPPING__PATIENCE."""
    return ENV_PREFIX + ENV_DELIMITER.join(dotted.split(".")).upper()


@dataclass(frozen=True)
class EnvSetting:
    """One config key set by an environment variable."""

    variable: str  # the name as it is written in the environment, for messages
    key: str  # the dotted config key
    value: Any  # read as YAML, like a --set value


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _env_key(variable: str, parts: list[str]) -> str:
    """The dotted key that the `__`-separated parts of a variable's name denote.

    Raises:
        ConfigError: a part names no key, a key below a value, or a whole section.
    """
    model: type[BaseModel] | None = Config
    path: list[str] = []
    for part in parts:
        name = part.lower()
        if model is None:
            whole = ".".join(path)
            raise ConfigError(
                f"{variable}: {whole} is a value, not a section: set it whole, e.g. {env_variable(whole)}=<YAML value>"
            )
        if name not in model.model_fields:
            allowed = ", ".join(model.model_fields)
            if path:
                raise ConfigError(f"{variable}: unknown key {'.'.join([*path, name])} (allowed in {'.'.join(path)}: {allowed})")
            raise ConfigError(
                f"{variable}: unknown section {name} (sections and top-level keys: {allowed}); every "
                f"{ENV_PREFIX}<NAME>{ENV_DELIMITER}... variable is read as config: rename a variable meant for something else"
            )
        path.append(name)
        model = _section_model(model.model_fields[name].annotation)
    dotted = ".".join(path)
    if model is not None:
        first = next(iter(model.model_fields))
        raise ConfigError(
            f"{variable}: {dotted} is a section: set its keys one by one, e.g. {env_variable(f'{dotted}.{first}')}"
        )
    return dotted


def env_settings(environ: Mapping[str, str]) -> list[EnvSetting]:
    """The config keys that `environ` sets, in pydantic-settings' `CHAMPION_<SECTION>__<KEY>` form.

    pydantic-settings' EnvSettingsSource supplies the conventions and reads the variables (prefix,
    `__` nesting, names matched in any case, empty values ignored as if unset); its own decoding is
    not used. It reads JSON only for list and section fields and hands every other value on as text
    (so `false` would reach the `bool | str` field `model.pretrained` as the string "false"), drops a
    variable that names no field and passes an unknown nested one on without its name. Here every
    value is read as YAML, like a `--set` value, and each key keeps the variable that set it, so that
    errors name the variable.

    Which variables are config: every `CHAMPION_<NAME>__...` one (an unknown key there is an error,
    never a silent no-op), and `CHAMPION_<KEY>` where KEY is a top-level key (`experiment`). Any other
    `CHAMPION_*` name without `__` (CHAMPION_API_KEY, CHAMPION_WORKFLOW_MODE,
    CHAMPION_ONNX_EXTERNAL_DATA_BYTES) is not config and is ignored here.

    Raises:
        ConfigError: naming every variable with an unknown key, a section instead of a key, a value
            that is not YAML, or a key that two variables set (names differing only in case).
    """
    from pydantic_settings import EnvSettingsSource

    class _Source(EnvSettingsSource):
        def _load_env_vars(self) -> Mapping[str, str | None]:
            # The names as written (the parent lowercases them), so a message names the variable the
            # user set; the prefix and the keys are still matched in any case below.
            return {k: v for k, v in environ.items() if not (self.env_ignore_empty and v == "")}

    source = _Source(
        Config, case_sensitive=False, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, env_ignore_empty=True
    )
    fold = (lambda text: text) if source.case_sensitive else str.lower
    prefix = fold(source.env_prefix)
    found: dict[str, EnvSetting] = {}
    errors: list[str] = []
    for variable, raw in sorted(source.env_vars.items()):
        name = fold(variable)
        if not name.startswith(prefix) or raw is None:
            continue
        rest = name[len(prefix) :]
        if source.env_nested_delimiter not in rest and rest not in Config.model_fields:
            continue  # not a config key: another setting of champion's (CHAMPION_API_KEY, ...)
        try:
            key = _env_key(variable, rest.split(source.env_nested_delimiter))
            setting = EnvSetting(variable, key, _read_value(raw, f"{variable}={raw!r}"))
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if key in found:
            errors.append(f"{found[key].variable} and {variable} both set {key}: keep one")
            continue
        found[key] = setting
    if errors:
        raise ConfigError("invalid configuration in the environment:\n  " + "\n  ".join(errors))
    return list(found.values())


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read YAML (or start from `base`), apply the environment, then `--set` overrides; validate once.

    Precedence, lowest first: built-in defaults, the YAML file (or `base`), `env`, `overrides`.

    Args:
        env: Environment variables to read `CHAMPION_<SECTION>__<KEY>` settings from (`os.environ`),
            only where a config is resolved afresh; None (the default) reads none, so a config a run
            logged (`base`) is never changed by the environment of a later step.

    Raises:
        ConfigError: unreadable file, malformed override or variable, unknown key or bad value; a key
            the environment set is reported with the variable's name.
    """
    tree: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, not {type(loaded).__name__}")
        tree = loaded
    origins: dict[str, str] = {}  # dotted key -> the variable that set it, for error messages
    for setting in env_settings(env) if env is not None else []:
        set_dotted(tree, setting.key, setting.value, origin=setting.variable)
        origins[setting.key] = setting.variable
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
        for k in [k for k in origins if k == key or k.startswith(f"{key}.")]:
            del origins[k]  # --set replaced what the variable set: it is not to blame for errors there
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format(exc, origins)) from None


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf, for `--help`."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            else:
                default = field.get_default(call_default_factory=True)
                shown = json.dumps(to_jsonable_python(default))
                rows.append((f"{prefix}{name}", shown, field.description or ""))

    walk(Config, "")
    return rows
