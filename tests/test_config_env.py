"""Configuration from the environment: CHAMPION_<SECTION>__<KEY>, between the YAML file and --set.

Only a config resolved afresh (run, train, data prepare) reads the environment; a logged run's
config (promote, export, validate, the training of --resume) never does. Real SQLite MLflow, real
ingestion of the digits data set, one real 1-epoch training run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from champion.config import Config, env_settings, env_variable, load_config
from champion.errors import ConfigError


def test_precedence_is_default_then_yaml_then_environment_then_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"training": {"epochs": 5, "learning_rate": 0.01, "batch_size": 16}}))
    env = {"CHAMPION_TRAINING__EPOCHS": "7", "CHAMPION_TRAINING__LEARNING_RATE": "0.02"}
    cfg = load_config(path, ["training.epochs=9"], env=env)
    assert cfg.training.epochs == 9  # --set beats the environment
    assert cfg.training.learning_rate == 0.02  # the environment beats the file
    assert cfg.training.batch_size == 16  # the file beats the default
    assert cfg.training.seed == Config().training.seed  # the default where nothing else speaks
    assert load_config(path, env=env).training.epochs == 7


def test_the_cli_resolves_environment_below_set_and_the_seed_flags(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from champion.cli import _resolve_config

    monkeypatch.setenv("CHAMPION_TRAINING__EPOCHS", "7")
    monkeypatch.setenv("CHAMPION_TRAINING__BATCH_SIZE", "8")
    monkeypatch.setenv("CHAMPION_TRAINING__LEARNING_RATE", "0.02")
    cfg = _resolve_config(None, ["training.batch_size=32"], 11, None, None)
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.training.learning_rate) == (11, 32, 0.02)


def test_nested_and_top_level_keys() -> None:
    cfg = load_config(env={
        "CHAMPION_TRAINING__EARLY_STOPPING__PATIENCE": "5",
        "CHAMPION_TRAINING__EARLY_STOPPING__MONITOR": "val_loss",
        "CHAMPION_PROMOTION_CRITERIA__THRESHOLD": "0.95",
        "CHAMPION_DATA__S3__ENDPOINT_URL": "http://127.0.0.1:9000",
        "CHAMPION_EXPERIMENT": "demo",
    })  # fmt: skip
    es = cfg.training.early_stopping
    assert (es.patience, es.monitor, es.mode) == (5, "val_loss", "min")  # mode still follows monitor
    assert cfg.promotion_criteria.threshold == 0.95
    assert cfg.data.s3.endpoint_url == "http://127.0.0.1:9000"
    assert cfg.experiment == "demo"


def test_values_are_read_as_yaml_like_set_values() -> None:
    cfg = load_config(env={
        "CHAMPION_DATA__IMAGE_SIZE": "[64,64]",
        "CHAMPION_EXPORT__FORMATS": "[onnx, torchscript]",
        "CHAMPION_TRAINING__EPOCHS": "3",
        "CHAMPION_TRAINING__DETERMINISTIC": "false",
        "CHAMPION_MODEL__PRETRAINED": "false",  # bool | str: false, not the file name "false"
        "CHAMPION_MODEL__NAME": '"2024"',  # quoted: text, not a number
        "CHAMPION_TRAINING__DEVICES": "0,1",
        "CHAMPION_DATA__SOURCE": "s3://bucket/digits",
        "CHAMPION_DATA__CHECKSUMS": "{train-images.gz: abc123}",
        "CHAMPION_DATA__CACHE_DIR": "null",
    })  # fmt: skip
    assert cfg.data.image_size == (64, 64) and cfg.export.formats == ["onnx", "torchscript"]
    assert cfg.training.epochs == 3 and cfg.training.deterministic is False
    assert cfg.model.pretrained is False and cfg.model.name == "2024"
    assert cfg.training.devices == "0,1" and cfg.data.source == "s3://bucket/digits"
    assert cfg.data.checksums == {"train-images.gz": "abc123"} and cfg.data.cache_dir is None
    # The same text gives the same value through --set.
    assert cfg == load_config(overrides=[
        "data.image_size=[64,64]", "export.formats=[onnx, torchscript]", "training.epochs=3",
        "training.deterministic=false", "model.pretrained=false", 'model.name="2024"', "training.devices=0,1",
        "data.source=s3://bucket/digits", "data.checksums={train-images.gz: abc123}", "data.cache_dir=null",
    ])  # fmt: skip


def test_names_match_in_any_case_and_an_empty_value_is_unset() -> None:
    cfg = load_config(env={"champion_training__epochs": "4", "Champion_Experiment": "mixed", "CHAMPION_TRAINING__SEED": ""})
    assert cfg.training.epochs == 4 and cfg.experiment == "mixed" and cfg.training.seed == 42


def test_variables_that_are_not_config_keys_are_ignored() -> None:
    env = {
        "CHAMPION_API_KEY": "secret",
        "AM_SC_API_KEY": "secret",
        "CHAMPION_WORKFLOW_MODE": "1",
        "CHAMPION_ONNX_EXTERNAL_DATA_BYTES": "1024",
        "CHAMPION_ANYTHING_ELSE": "[not, config",  # not even valid YAML: never read
        "CHAMPION": "x",
        "CHAMPIONSHIP__EPOCHS": "3",  # not the CHAMPION_ prefix
        "MLFLOW_TRACKING_URI": "sqlite:///x.db",
    }
    assert env_settings(env) == []
    assert load_config(env=env) == Config()


def test_every_key_has_a_variable_that_sets_it() -> None:
    from champion.config import describe_keys

    for key, _, _ in describe_keys():
        (setting,) = env_settings({env_variable(key): "null"})
        assert setting.key == key
    assert env_variable("training.early_stopping.patience") == "CHAMPION_TRAINING__EARLY_STOPPING__PATIENCE"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CHAMPION_TRAINING__EPOHCS": "3"}, "CHAMPION_TRAINING__EPOHCS: unknown key training.epohcs (allowed in training: epochs,"),
        ({"CHAMPION_TRAINNIG__EPOCHS": "3"}, "CHAMPION_TRAINNIG__EPOCHS: unknown section trainnig"),
        ({"CHAMPION_TRAINING__EARLY_STOPPING__PATIENT": "3"}, "unknown key training.early_stopping.patient"),
        ({"CHAMPION_MODEL": "{name: x}"}, "CHAMPION_MODEL: model is a section: set its keys one by one, e.g. CHAMPION_MODEL__NAME"),
        ({"CHAMPION_TRAINING__EARLY_STOPPING": "3"}, "CHAMPION_TRAINING__EARLY_STOPPING: training.early_stopping is a section"),
        ({"CHAMPION_EXPERIMENT__NAME": "x"}, "CHAMPION_EXPERIMENT__NAME: experiment is a value, not a section"),
        # Case folding would mangle a file name used as a key: the mapping is set whole.
        ({"CHAMPION_DATA__CHECKSUMS__A": "x"}, "CHAMPION_DATA__CHECKSUMS__A: data.checksums is a value, not a section: set it whole"),
        ({"CHAMPION_DATA__IMAGE_SIZE": "[64,"}, "CHAMPION_DATA__IMAGE_SIZE='[64,': value is not valid YAML"),
        ({"CHAMPION_TRAINING__EPOCHS": "3", "champion_training__epochs": "4"}, "CHAMPION_TRAINING__EPOCHS and champion_training__epochs both set training.epochs"),
    ],
)  # fmt: skip
def test_a_variable_that_names_no_key_is_an_error_naming_it(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env=env)
    assert expected in str(err.value)


def test_every_bad_variable_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"CHAMPION_TRAINING__EPOHCS": "3", "CHAMPION_DATA__SORCE": "x", "CHAMPION_API_KEY": "k"})
    msg = str(err.value)
    assert "CHAMPION_TRAINING__EPOHCS" in msg and "CHAMPION_DATA__SORCE" in msg and "CHAMPION_API_KEY" not in msg


def test_a_bad_value_names_the_variable_and_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"CHAMPION_TRAINING__EPOCHS": "abc", "CHAMPION_DATA__IMAGE_SIZE": "[64, x]", "CHAMPION_TRAINING__SEED": "1"})
    msg = str(err.value)
    assert "CHAMPION_TRAINING__EPOCHS: training.epochs: Input should be a valid integer" in msg
    assert "CHAMPION_DATA__IMAGE_SIZE: data.image_size.1:" in msg  # a bad list item: the variable that set the list
    assert "CHAMPION_TRAINING__SEED" not in msg
    # A section's own rule is blamed on the variables that set keys inside it.
    with pytest.raises(ConfigError) as err:
        load_config(env={"CHAMPION_DATA__VALIDATION_SPLIT": "0.5", "CHAMPION_DATA__TEST_SPLIT": "0.45"})
    assert "CHAMPION_DATA__TEST_SPLIT, CHAMPION_DATA__VALIDATION_SPLIT: data:" in str(err.value)


def test_set_replaces_a_bad_environment_value(tmp_path: Path) -> None:
    env = {"CHAMPION_TRAINING__EPOCHS": "abc"}
    assert load_config(overrides=["training.epochs=2"], env=env).training.epochs == 2
    # ... and an error of --set's own value is not blamed on the variable it replaced.
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["training.epochs=-1"], env=env)
    assert "CHAMPION_TRAINING__EPOCHS" not in str(err.value) and "training.epochs" in str(err.value)


def test_a_value_in_the_file_where_a_section_belongs_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training: 3\n")
    with pytest.raises(ConfigError, match="CHAMPION_TRAINING__EPOCHS: 'training' is a value, not a section"):
        load_config(path, env={"CHAMPION_TRAINING__EPOCHS": "3"})


def test_without_env_nothing_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAMPION_TRAINING__EPOHCS", "3")
    monkeypatch.setenv("CHAMPION_TRAINING__EPOCHS", "3")
    assert load_config() == Config()
    assert load_config(base={"training": {"epochs": 2}}).training.epochs == 2


# --- the CLI: bad variables stop a command before any work; the prepared data follows good ones ---


@pytest.mark.parametrize("command", [["data", "prepare"], ["train"], ["run"]])
@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [("CHAMPION_TRAINING__EPOCHS", "three", "CHAMPION_TRAINING__EPOCHS: training.epochs"),
     ("CHAMPION_TRAINING__EPOHCS", "3", "CHAMPION_TRAINING__EPOHCS: unknown key training.epohcs")],
)  # fmt: skip
def test_a_bad_variable_stops_the_command_before_any_work(
    workdir: Path, cli, monkeypatch: pytest.MonkeyPatch, command: list[str], variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    result = cli(*command, "--quiet", "--output-files", "out")
    assert result.exit_code == 2, result.stderr
    assert expected in result.stderr
    assert not (workdir / "mlflow.db").exists() and not (workdir / "cache" / "champion").exists()
    assert not (workdir / "checkpoints").exists()
    from champion.cli import OUTPUT_KEYS

    assert not [p.name for p in (workdir / "out").iterdir() if p.name in OUTPUT_KEYS]  # the folder is claimed, no value written


def test_data_prepare_uses_the_environment_below_set(workdir: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    default = cli("data", "prepare", "--quiet")
    assert default.exit_code == 0, default.stderr
    monkeypatch.setenv("CHAMPION_DATA__VALIDATION_SPLIT", "0.5")
    monkeypatch.setenv("CHAMPION_DATA__CACHE_DIR", str(workdir / "env-cache"))
    from_env = cli("data", "prepare", "--quiet")
    assert from_env.exit_code == 0, from_env.stderr
    assert from_env.values["DATA_PATH"].startswith(str(workdir / "env-cache"))
    assert int(from_env.values["VAL_SIZE"]) > int(default.values["VAL_SIZE"])
    assert from_env.values["DATA_DIGEST"] != default.values["DATA_DIGEST"]
    # --set wins over the variable: the default split again, in the environment's cache.
    overridden = cli("data", "prepare", "--quiet", "--set", "data.validation_split=0.2")
    assert overridden.exit_code == 0, overridden.stderr
    assert overridden.values["VAL_SIZE"] == default.values["VAL_SIZE"]
    assert overridden.values["DATA_DIGEST"] == default.values["DATA_DIGEST"]


def test_help_states_the_environment_form_and_precedence(cli) -> None:
    for command in (["run"], ["train"], ["data", "prepare"]):
        text = " ".join(cli(*command, "--help").stdout.split())
        assert "CHAMPION_<SECTION>__<KEY>" in text and "CHAMPION_TRAINING__EARLY_STOPPING__PATIENCE=5" in text
        assert "built-in default, --config file, environment, --set" in text


# --- a logged run's config is never read through the environment ---


def test_a_logged_runs_config_ignores_the_environment(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from champion.registry import tracking

    tracking.setup_tracking()
    logged = Config().model_copy(update={"experiment": "logged"})
    # named: MLflow keeps the active experiment's id per process, and an earlier test's store had others
    mlflow.set_experiment("logged")
    with mlflow.start_run() as run:
        mlflow.log_text(logged.to_yaml(), "config.yaml")
    monkeypatch.setenv("CHAMPION_EXPERIMENT", "from-env")
    monkeypatch.setenv("CHAMPION_PROMOTION_CRITERIA__THRESHOLD", "0.1")
    monkeypatch.setenv("CHAMPION_TRAINING__EPOHCS", "3")  # would be an error if it were read
    cfg = tracking.load_run_config(run.info.run_id)
    assert cfg == logged and cfg.promotion_criteria.threshold == 0.9


@pytest.mark.slow
def test_training_logs_the_environment_and_later_steps_judge_what_was_trained(
    workdir: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from champion.registry.policy import POLICY_TAG

    for key, value in {
        "CHAMPION_TRAINING__EPOCHS": "1", "CHAMPION_MODEL__NAME": "env-cnn", "CHAMPION_EXPERIMENT": "env-exp",
        "CHAMPION_PROMOTION_CRITERIA__THRESHOLD": "0.5", "CHAMPION_EXPORT__NUM_SAMPLES": "8",
        "CHAMPION_EXPORT__BATCH_SIZES": "[1, 4]",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    trained = cli("train", "--quiet")
    assert trained.exit_code == 0, trained.stderr
    run_id = trained.values["RUN_ID"]
    run = MlflowClient().get_run(run_id)
    assert mlflow.get_experiment(run.info.experiment_id).name == "env-exp"
    params = run.data.params
    assert (params["training.epochs"], params["model.name"], params["promotion_criteria.threshold"]) == ("1", "env-cnn", "0.5")
    logged = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml"))
    assert logged["training"]["epochs"] == 1 and logged["export"]["batch_sizes"] == [1, 4]

    # The later steps' environment says something else, some of it invalid: none of it is read.
    monkeypatch.setenv("CHAMPION_PROMOTION_CRITERIA__THRESHOLD", "1.0")  # a bar no model clears
    monkeypatch.setenv("CHAMPION_EXPORT__FORMATS", "[bogus]")
    monkeypatch.setenv("CHAMPION_TRAINING__EPOHCS", "3")
    promoted = cli("promote", "--run-id", run_id, "--quiet")
    assert promoted.exit_code == 0, promoted.stderr
    assert promoted.values["RESULT"] == "passed"
    stored = json.loads(MlflowClient().get_registered_model("env-cnn").tags[POLICY_TAG])
    assert stored["promotion_criteria"]["threshold"] == 0.5  # the run's own (first promotion), not 1.0
    assert stored["export"]["batch_sizes"] == [1, 4]
    exported = cli("export", "--model-name", "env-cnn", "--quiet")
    assert exported.exit_code == 0, exported.stderr
    validated = cli("validate", "--export-run-id", exported.values["EXPORT_RUN_ID"], "--quiet")
    assert validated.exit_code == 0 and validated.values["RESULT"] == "passed", validated.stderr


def test_champions_other_variables_cannot_be_config_and_are_documented() -> None:
    """Every CHAMPION_* variable name the code holds as a string: no `__`, no top-level key, listed in the docs."""
    import re

    root = Path(__file__).resolve().parents[1]
    names: set[str] = set()
    for path in (root / "src" / "champion").rglob("*.py"):
        names |= set(re.findall(r"""["'](CHAMPION_[A-Z0-9_]+)["']""", path.read_text()))
    assert {"CHAMPION_ONNX_EXTERNAL_DATA_BYTES"} <= names
    docs = (root / "docs" / "configuration.md").read_text()
    for name in sorted(names):
        assert "__" not in name, f"{name} has the config's CHAMPION_<SECTION>__<KEY> form"
        assert env_settings({name: "[not yaml"}) == [], f"{name} would be read as a config key"
        assert f"`{name}`" in docs, f"{name} is not listed in docs/configuration.md (scripts/config_docs.py)"
