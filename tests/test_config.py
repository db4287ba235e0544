"""The configuration tree: shipped files, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from champion.config import Config, describe_keys, load_config
from champion.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    cfg = load_config(path)
    written = _leaves(yaml.safe_load(path.read_text()))
    loaded = _leaves(cfg.model_dump(mode="json"))
    # Every value the file writes is the value in force: none dropped, renamed or replaced by another.
    assert {key: loaded.get(key) for key in written} == written
    # Each recipe names its experiment and registered model itself, rather than taking the built-in ones.
    assert {"experiment", "model.name"} <= written.keys()


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf of a config tree: a file and a loaded config compare key by key."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_shipped_configs_include_the_three_recipes() -> None:
    assert {p.name for p in CONFIGS} >= {"default.yaml", "mnist.yaml", "imagenette.yaml"}


def test_default_yaml_is_the_built_in_default() -> None:
    assert load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml") == Config()
    assert Config().data.source == "digits" and Config().model.architecture == "mnist_cnn"


def test_imagenette_keeps_the_original_scripts_values() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "imagenette.yaml")
    t, p = cfg.training, cfg.promotion_criteria
    assert (cfg.model.architecture, t.optimizer, t.learning_rate, t.batch_size, t.epochs) == ("resnet18", "adam", 0.001, 64, 10)
    assert (p.threshold, p.min_improvement) == (0.90, 0.005)


def test_set_reads_values_as_yaml() -> None:
    cfg = load_config(overrides=["data.image_size=[64,64]", "training.epochs=3", "model.pretrained=false", "data.channels=3"])
    assert cfg.data.image_size == (64, 64)
    assert cfg.training.epochs == 3 and cfg.data.channels == 3


def test_unknown_key_names_the_key_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["training.epoch=3"])
    msg = str(err.value)
    assert "training.epoch" in msg and "unknown key" in msg and "epochs" in msg and "learning_rate" in msg


def test_bad_value_names_the_key_and_allowed_values() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["training.optimizer=rmsprop"])
    assert "training.optimizer" in str(err.value) and "adamw" in str(err.value)


def test_cross_field_rule_is_checked_up_front() -> None:
    with pytest.raises(ConfigError, match="validation_split"):
        load_config(overrides=["data.validation_split=0.5", "data.test_split=0.45"])


def test_malformed_override_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(overrides=["training.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_flat_params_are_dotted_keys() -> None:
    flat = Config().flat()
    assert flat["training.epochs"] == 10 and flat["promotion_criteria.threshold"] == 0.90
    assert flat["training.early_stopping.patience"] == 3


def test_every_key_has_a_description() -> None:
    rows = describe_keys()
    assert len(rows) > 30
    assert all(desc for _, _, desc in rows), [k for k, _, d in rows if not d]


def test_cli_config_error_exits_2_before_any_work(workdir: Path, cli) -> None:
    result = cli("run", "--set", "training.epoch=3")
    assert result.exit_code == 2
    assert "training.epoch" in result.stderr
    assert not (workdir / "mlflow.db").exists()  # nothing was started
    assert cli("train", "--epochs", "0").exit_code == 2


@pytest.mark.parametrize("name", ["x-onnx", "x-onnx-int8", ".."])
def test_a_model_name_that_collides_or_escapes_is_refused(workdir: Path, cli, name: str) -> None:
    # x-onnx would land in the ONNX registry of model x; '..' names a folder above --output-dir.
    result = cli("run", "--set", f"model.name={name}", "--quiet")
    assert result.exit_code == 2 and "model.name" in result.stderr, result.stderr
    assert not (workdir / "mlflow.db").exists()


def test_approach_without_weights_fails_before_any_work(workdir: Path, cli) -> None:
    result = cli("train", "--set", "model.approach=fine_tuning", "--quiet")
    assert result.exit_code == 2 and "model.pretrained" in result.stderr
    assert not (workdir / "mlflow.db").exists()


def test_export_only_needs_a_checkpoint(workdir: Path, cli) -> None:
    result = cli("train", "--export-only", "--quiet")
    assert result.exit_code == 2 and "--checkpoint" in result.stderr
    missing = cli("train", "--export-only", "--checkpoint", "nope.ckpt", "--quiet")
    assert missing.exit_code == 1 and "nope.ckpt" in missing.stderr
    assert not (workdir / "mlflow.db").exists()


def test_loss_must_fit_the_architecture(workdir: Path, cli) -> None:
    result = cli("train", "--set", "training.loss=margin", "--quiet")
    assert result.exit_code == 2 and "capsnet" in result.stderr


def test_configuration_doc_is_current() -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("config_docs", root / "scripts" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (root / "docs" / "configuration.md").read_text() == module.render(), "run scripts/config_docs.py"


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("training.precision=64-nonsense", "training.precision", "bf16-mixed"),
        ("training.accelerator=gpux", "training.accelerator", "cuda"),
        ("training.strategy=dpp", "training.strategy", "ddp_spawn"),
        ("training.devices=0", "training.devices", "-1"),
        ("training.devices=[0,0]", "training.devices", "unique"),
        ('training.devices="0,x"', "training.devices", "0,1"),
        ("training.devices=true", "training.devices", "auto"),
    ],
)
def test_lightning_flags_are_checked_when_the_config_loads(override: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert key in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize(
    "override, value",
    [
        ("training.devices=2", 2), ("training.devices=-1", -1), ("training.devices=auto", "auto"),
        ("training.devices=[0,1]", [0, 1]), ('training.devices="0,1"', "0,1"), ('training.devices="-1"', "-1"),
        ("training.precision=16", "16"), ("training.precision=bf16-mixed", "bf16-mixed"),
        ("training.accelerator=gpu", "gpu"), ("training.strategy=fsdp", "fsdp"),
    ],
)  # fmt: skip
def test_a_gpu_cluster_config_loads_on_any_machine(override: str, value: object) -> None:
    cfg = load_config(overrides=[override])
    key = override.split("=")[0].split(".")[1]
    assert getattr(cfg.training, key) == value


def test_allowed_lightning_names_match_lightnings_registries() -> None:
    """The lists config.py copies (to load without importing Lightning) are Lightning's own."""
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from champion.config import Accelerator, Precision, Strategy

    # "auto" and "gpu" are accepted by the Trainer besides the registered accelerators.
    assert set(get_args(Accelerator)) == set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"}
    assert set(get_args(Strategy)) == set(StrategyRegistry.available_strategies()) | {"auto"}
    assert set(get_args(Precision)) == set(get_args(_PRECISION_INPUT_STR)) | set(get_args(_PRECISION_INPUT_STR_ALIAS))


def test_loading_a_config_does_not_import_lightning() -> None:
    import subprocess
    import sys

    code = "import sys; from champion.config import load_config; load_config(); print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_monitor_mode_follows_the_metric() -> None:
    cfg = load_config(overrides=["training.checkpoint.monitor=val_loss", "training.early_stopping.monitor=val_loss"])
    assert cfg.training.checkpoint.mode == "min" and cfg.training.early_stopping.mode == "min"
    assert load_config(overrides=["training.checkpoint.monitor=val_loss", "training.checkpoint.mode=min"]).training.checkpoint.mode == "min"
    for section in ("checkpoint", "early_stopping"):
        with pytest.raises(ConfigError) as err:
            load_config(overrides=[f"training.{section}.monitor=val_loss", f"training.{section}.mode=max"])
        assert f"training.{section}.mode=max" in str(err.value) and "mode=min" in str(err.value)
    with pytest.raises(ConfigError, match="better is max"):
        load_config(overrides=["training.early_stopping.mode=min"])
