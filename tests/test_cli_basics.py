"""What every CLI user reaches for: `champion --version`, `champion config` (the resolved config,
each value marked with what set it, itself a config file), the tracking store each command names,
and tables that keep names and aliases whole in an 80-column terminal.

Real commands in-process (conftest.invoke), a real SQLite-backed MLflow store; a terminal is
rich's own switch (TTY_COMPATIBLE=1) with the width it reads (COLUMNS).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import invoke
from servers import free_port

from champion.cli.common import _resolve_config
from champion.cli.tables import fit
from champion.config import Config, load_config

ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --- --version ------------------------------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    from importlib import metadata

    result = invoke("--version")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"champion {metadata.version('champion')}\n"


# --- champion config ------------------------------------------------------------------------------


def marks(text: str) -> dict[str, tuple[str, str]]:
    """dotted key -> (value as printed, the comment after it), from `champion config`'s output."""
    found: dict[str, tuple[str, str]] = {}
    path: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        key, _, rest = line.strip().partition(":")
        path[depth:] = [key]
        if rest.strip():
            value, _, comment = rest.partition("  # ")
            found[".".join(path)] = (value.strip(), comment)
    return found


@pytest.fixture
def mine(workdir: Path) -> Path:
    path = workdir / "mine.yaml"
    path.write_text("training:\n  epochs: 7\n  early_stopping: {patience: 5}\ndata:\n  image_size: [32, 32]\n")
    return path


SETS = ["training.learning_rate=0.01", "training.early_stopping.monitor=val_loss", "data.checksums={a.gz: 0123abcd}"]


def test_config_marks_each_value_with_what_set_it(mine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAMPION_TRAINING__EPOCHS", "8")  # the environment is above the file
    monkeypatch.setenv("CHAMPION_TRAINING__BATCH_SIZE", "16")
    result = invoke("config", "--config", "mine.yaml", *(a for s in SETS for a in ("--set", s)))
    assert result.exit_code == 0, result.stderr
    shown = marks(result.stdout)
    assert shown["training.epochs"] == ("8", "environment CHAMPION_TRAINING__EPOCHS")
    assert shown["training.batch_size"] == ("16", "environment CHAMPION_TRAINING__BATCH_SIZE")
    assert shown["training.learning_rate"] == ("0.01", "--set")
    assert shown["training.early_stopping.patience"] == ("5", "file mine.yaml")
    assert shown["training.early_stopping.monitor"] == ("val_loss", "--set")
    assert shown["training.early_stopping.mode"] == ("min", "derived from other keys")  # follows the monitor
    assert shown["data.image_size"] == ("[32, 32]", "file mine.yaml")
    assert shown["data.checksums"] == ("{a.gz: 0123abcd}", "--set")
    assert shown["model.name"] == ("digits-cnn", "default")
    # Every key of the schema, each marked.
    assert set(shown) == set(Config().flat())
    assert all(comment for _, comment in shown.values())


def test_config_output_is_a_config_file_that_resolves_the_same(mine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAMPION_TRAINING__BATCH_SIZE", "16")
    # Values that a careless YAML writer would break: a '#' that would start a comment, a line break.
    sets = [*SETS, "data.source='my data #2: raw'", 'experiment="two\\nlines"', "model.pretrained=models:/base@champion"]
    args = ["--config", "mine.yaml", *(a for s in sets for a in ("--set", s))]
    printed = invoke("config", *args)
    assert printed.exit_code == 0, printed.stderr
    Path("resolved.yaml").write_text(printed.stdout)
    # What `champion run` resolves (the same function, the same environment) ...
    expected = _resolve_config(Path("mine.yaml"), sets, None, None, None)
    assert expected.experiment == "two\nlines" and expected.data.source == "my data #2: raw"
    assert _resolve_config(Path("resolved.yaml"), None, None, None, None) == expected
    # ... and the file alone, without the environment, says all of it.
    monkeypatch.delenv("CHAMPION_TRAINING__BATCH_SIZE")
    assert load_config("resolved.yaml") == expected
    again = invoke("config", "--config", "resolved.yaml")
    assert again.exit_code == 0, again.stderr
    first, second = marks(printed.stdout), marks(again.stdout)
    assert {k: yaml.safe_load(v) for k, (v, _) in second.items()} == {k: yaml.safe_load(v) for k, (v, _) in first.items()}
    assert {c for _, c in second.values()} == {"file resolved.yaml"}


def test_config_refuses_bad_keys_as_every_command_does(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = invoke("config", "--set", "training.epohcs=3")
    assert bad.exit_code == 2 and "training.epohcs: unknown key (allowed here: epochs," in bad.stderr, bad.stderr
    assert bad.stderr == invoke("data", "prepare", "--set", "training.epohcs=3").stderr
    assert invoke("config", "--config", "missing.yaml").exit_code == 2
    monkeypatch.setenv("CHAMPION_TRAINING__EPOCHS", "three")
    env = invoke("config")
    assert env.exit_code == 2 and "CHAMPION_TRAINING__EPOCHS: training.epochs" in env.stderr, env.stderr


# --- the tracking store each command names --------------------------------------------------------


def store_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tracking store:")]


def test_a_command_names_a_tracking_store_it_creates(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    first = invoke("models")
    assert first.exit_code == 0, first.stderr
    (line,) = store_lines(first.stderr)
    assert line.startswith(f"tracking store: {uri} (created now: ") and "MLFLOW_TRACKING_URI" in line
    # An existing store is named on a terminal only: logs stay as they were.
    assert store_lines(invoke("models").stderr) == []
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert store_lines(invoke("models").stderr) == [f"tracking store: {uri}"]


def test_quiet_names_no_store(workdir: Path) -> None:
    quiet = invoke("promote", "--run-id", "0123456789abcdef", "--quiet")  # no such run: exits 1 after naming the store
    assert quiet.exit_code == 1 and store_lines(quiet.stderr) == [], quiet.stderr
    (workdir / "mlflow.db").unlink()
    loud = invoke("promote", "--run-id", "0123456789abcdef")
    assert loud.exit_code == 1 and len(store_lines(loud.stderr)) == 1, loud.stderr


def test_the_store_is_named_once_per_command(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from champion.registry import tracking

    tracking.forget_announced()  # what the CLI does as a command starts
    for _ in range(3):  # `champion run` sets the store up in each stage
        tracking.setup_tracking()
    assert len(store_lines(capsys.readouterr().err)) == 1


def test_the_store_is_named_without_its_credentials(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret-pw@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    result = invoke("runs")
    assert result.exit_code == 1, result.stderr
    assert store_lines(result.stderr) == [f"tracking store: http://***@127.0.0.1:{port}"]
    assert "s3cret-pw" not in result.stderr + result.stdout


# --- tables in an 80-column terminal --------------------------------------------------------------

NAME = "handwritten-digits-classifier-cnn"  # a name as long as real ones get


def test_models_and_runs_keep_names_and_aliases_whole_in_80_columns(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from champion.registry import tracking

    tracking.setup_tracking()
    mlflow.set_experiment("champion")
    with mlflow.start_run(run_name=NAME) as run:
        mlflow.log_metric("best_val_accuracy", 0.9712)
        mlflow.set_tags({"gate1.result": "passed", "data.digest": "0123456789abcdef"})
    c = tracking.client()
    c.create_registered_model(NAME)
    for _ in range(2):
        c.create_model_version(NAME, source=run.info.artifact_uri, run_id=run.info.run_id)
    c.set_registered_model_alias(NAME, "champion", "2")
    c.set_registered_model_alias(NAME, "previous_champion", "1")

    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "80")
    for args, whole in ((["models"], [NAME, "@champion", "@previous_champion"]), (["runs"], [run.info.run_id, NAME])):
        result = invoke(*args)
        assert result.exit_code == 0, result.stderr
        text = ANSI.sub("", result.stdout)
        assert "┃" in text, text  # drawn as a table (piped, it is tab-separated lines)
        assert max(len(line) for line in text.splitlines()) <= 80, text
        assert "…" not in text, text
        for cell in whole:
            assert re.search(rf"│ {re.escape(cell)} ", text), (cell, text)
        assert "not shown at this width:" in text  # what was dropped is said


def test_fit_keeps_the_columns_that_matter_and_drops_the_least_needed_first() -> None:
    columns = ("name", "note", "digest")
    rows = [("a-long-model-name", "short words here", "0123456789abcdef")]
    assert fit(columns, rows, ["name"], ["digest", "note"], 200) == {"name": None, "note": None, "digest": None}
    # Too narrow for all: the digest goes first; the note wraps, in what is left; the name stays whole.
    assert fit(columns, rows, ["name"], ["digest", "note"], 36) == {"name": len("a-long-model-name"), "note": 12}
    assert list(fit(columns, rows, ["name"], ["digest", "note"], 20)) == ["name"]
