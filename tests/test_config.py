"""The configuration tree: shipped files, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from champion.config import Config, describe_keys, load_config
from champion.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.name and cfg.experiment


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
