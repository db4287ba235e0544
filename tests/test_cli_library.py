"""What the CLI used to do itself, now library functions: the policy diff and listing
(champion.registry.policy), run-local's work folder (champion.workflow.local), the card's folder
(champion.stages.card), and the option defaults the commands read from the library.

Real objects throughout: Policy models, folders on disk, a SQLite-backed MLflow store.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import module_workdir

from champion.config import parse_override, set_dotted
from champion.errors import ChampionError, ConfigError
from champion.files import MARKER, claim, is_owned
from champion.registry import policy
from champion.stages import card
from champion.workflow import local


# --- policy: what `champion models policy` prints ---------------------------------------------


def test_changes_lists_only_the_keys_that_changed_as_json() -> None:
    old = policy.Policy()
    new = policy.Policy.model_validate({"promotion_criteria": {"threshold": 0.95}})
    assert old.promotion_criteria.threshold != 0.95
    assert policy.changes(old, new) == [f"changed: promotion_criteria.threshold: {json.dumps(old.promotion_criteria.threshold)} -> 0.95"]
    assert policy.changes(new, new) == []


def test_changes_from_no_policy_shows_every_key_coming_from_null() -> None:
    new = policy.Policy()
    found = policy.changes(None, new)
    assert [line.split(": ")[1] for line in found] == list(new.flat())  # every key, in the policy's order
    assert all(line.startswith("changed: ") and ": null -> " in line for line in found)
    batch = next(line for line in found if line.startswith("changed: export.batch_sizes:"))
    assert batch.endswith(json.dumps(new.flat()["export.batch_sizes"]))  # a list, as JSON


def test_lines_are_what_set_reads_back() -> None:
    shown = policy.Policy.model_validate({"promotion_criteria": {"threshold": 0.95}, "export": {"atol": 1e-4, "batch_sizes": [1, 8]}})
    found = policy.lines(shown)
    assert [line.split("=", 1)[0] for line in found] == list(shown.flat())
    assert "export.batch_sizes=[1, 8]" in found
    # Each line given to `--set` (read as YAML, then validated) gives back the policy shown.
    tree = policy.Policy().model_dump(mode="json")
    for line in found:
        set_dotted(tree, *parse_override(line))
    assert policy.Policy.model_validate(tree) == shown


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One SQLite-backed MLflow store for the module's registry tests (its schema costs seconds)."""
    from champion.registry import tracking

    with module_workdir(tmp_path_factory, "cli-library") as root:
        tracking.setup_tracking()
        yield root


def test_shown_names_the_fix_until_a_policy_is_stored(store: Path) -> None:
    from champion.registry import tracking

    with pytest.raises(ChampionError, match=r"'nowhere' has no stored promotion policy.*models policy nowhere --set"):
        policy.shown("nowhere")  # no such registered model
    tracking.client().create_registered_model("bare")
    with pytest.raises(ChampionError, match="'bare' has no stored promotion policy"):
        policy.shown("bare")  # a model, but no policy on it: not adopted, not defaulted
    stored = policy.Policy.model_validate({"export": {"atol": 1e-3}})
    assert stored != policy.Policy()
    policy.store("bare", stored, reason="test")
    assert policy.shown("bare") == stored


# --- run-local's work folder -------------------------------------------------------------------


def test_default_workdir_is_named_after_the_template_and_the_time() -> None:
    when = time.strptime("2024-03-05 06:07:08", "%Y-%m-%d %H:%M:%S")
    doc = {"metadata": {"name": "champion-digits"}}
    assert local.default_workdir(doc, when) == Path("workflow-runs/champion-digits-20240305-060708")
    assert local.default_workdir({}, when) == Path("workflow-runs/workflow-20240305-060708")
    now = local.default_workdir(doc)
    assert re.fullmatch(r"champion-digits-\d{8}-\d{6}", now.name) and now.parent == Path("workflow-runs")
    assert abs(time.mktime(time.strptime(now.name[-15:], "%Y%m%d-%H%M%S")) - time.time()) < 60


def test_claim_workdir_makes_and_marks_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = local.claim_workdir(Path("runs/first"))
    assert folder == tmp_path / "runs" / "first" and folder.is_absolute()
    assert is_owned(folder, "workflow-run") and [p.name for p in folder.iterdir()] == [MARKER]
    assert local.claim_workdir(folder) == folder  # claimed, nothing run in it yet: still usable


def test_claim_workdir_refuses_a_folder_that_holds_a_run(tmp_path: Path) -> None:
    folder = local.claim_workdir(tmp_path / "run")
    (folder / "train").mkdir()  # a task's folder: a run happened here
    with pytest.raises(ConfigError, match="already holds a run: choose a new or empty folder"):
        local.claim_workdir(folder)


def test_claim_workdir_never_takes_a_users_or_another_kinds_folder(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="already holds a run"):
        local.claim_workdir(mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    outputs = claim(tmp_path / "outputs", "outputs")  # only a marker in it, but of another kind
    with pytest.raises(ConfigError, match="not a workflow-run folder"):
        local.claim_workdir(outputs)


def test_an_empty_existing_folder_is_claimed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert is_owned(local.claim_workdir(tmp_path / "empty"), "workflow-run")


# --- the card's folder -------------------------------------------------------------------------


def test_card_folder_is_under_the_run_name() -> None:
    assert card.card_folder("outputs", "digits-cnn") == Path("outputs/digits-cnn/model_card")
    assert card.card_folder(Path("/tmp/x"), "a") == Path("/tmp/x/a/model_card")


def test_write_run_card_writes_under_the_runs_name(store: Path, tmp_path: Path) -> None:
    import mlflow

    mlflow.set_experiment("cli-library")  # not the active experiment an earlier module left in this process
    with mlflow.start_run(run_name="my-model") as run:
        for step, acc in enumerate((0.5, 0.8)):
            mlflow.log_metrics({"train_loss": 1 - acc, "val_loss": 1.1 - acc, "val_accuracy": acc, "best_val_accuracy": acc}, step=step)
        mlflow.log_dict({"classes": ["a", "b"], "split": "val", "accuracy": 0.8, "confusion_matrix": [[4, 1], [1, 4]]}, "evaluation.json")
    path = card.write_run_card(run.info.run_id, tmp_path / "out")
    # Not the champion (no model is registered): its own folder, never the champion's card.
    assert path == tmp_path / "out" / "my-model" / "runs" / run.info.run_id / "model_card.md"
    assert not (tmp_path / "out" / "my-model" / "model_card").exists()
    assert path.read_text().startswith("# Model card: my-model")
    logged = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "model_card")}
    assert "model_card/model_card.md" in logged


@pytest.mark.parametrize("run_name", ["../../escape", "..", "a/b"])
def test_a_run_name_that_is_a_path_writes_nothing(store: Path, tmp_path: Path, run_name: str) -> None:
    import mlflow

    from conftest import invoke

    mlflow.set_experiment("cli-library")
    with mlflow.start_run(run_name="card-target") as run:
        mlflow.log_dict({"classes": ["a", "b"], "split": "val", "accuracy": 0.8, "confusion_matrix": [[4, 1], [1, 4]]}, "evaluation.json")
    mlflow.MlflowClient().set_tag(run.info.run_id, "mlflow.runName", run_name)  # renamed afterwards, as anyone may
    out = tmp_path / "deep" / "out"
    result = invoke("card", "--run-id", run.info.run_id, "--output-dir", str(out))
    assert result.exit_code == 1 and "not a plain folder name" in result.stderr, result.stderr
    assert "MODEL_CARD" not in result.values
    assert [p for p in tmp_path.rglob("*")] == []  # nothing under tmp_path, inside --output-dir or beside it


def test_write_run_card_of_an_unknown_run_is_an_error(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ChampionError, match="does not exist in this tracking store"):
        card.write_run_card("0" * 32, tmp_path)
    assert not (tmp_path / "None").exists() and list(tmp_path.iterdir()) == []


# --- option defaults come from the library -----------------------------------------------------


def test_option_defaults_are_the_librarys() -> None:
    import typer

    from champion.cli import app
    from champion.deploy import kserve, triton
    from champion.deploy.serve import Limits
    from champion.workflow import argo, training_job

    root = typer.main.get_command(app)

    def default(path: str, option: str):
        command = root
        for word in path.split():
            command = command.commands[word]
        return next(p.default for p in command.params if option in p.opts)

    limits = Limits()
    assert default("serve", "--max-batch-size") == limits.max_batch_size
    assert default("serve", "--max-delay-ms") == limits.max_delay_ms
    assert default("serve", "--max-request-bytes") == limits.max_request_bytes
    assert default("serve", "--max-elements") == limits.max_elements
    opts = argo.Options()
    for option, value in (("--cpu", opts.cpu), ("--memory", opts.memory), ("--gpus", opts.gpus), ("--secret", opts.secret),
                          ("--tracking-uri", opts.tracking_uri)):  # fmt: skip
        assert default("workflow argo", option) == value
    isvc = kserve.inference_service("m", "s3://b/p")["spec"]["predictor"]["model"]["resources"]
    cpu, memory = default("deploy kserve", "--cpu"), default("deploy kserve", "--memory")
    assert isvc == kserve.inference_service("m", "s3://b/p", cpu=cpu, memory=memory)["spec"]["predictor"]["model"]["resources"]
    job = training_job.training_job(tracking_uri="http://mlflow:5000")[-1]
    same = training_job.training_job(
        tracking_uri="http://mlflow:5000", step=default("deploy training-job", "--step"), cpu=default("deploy training-job", "--cpu"),
        memory=default("deploy training-job", "--memory"), retries=default("deploy training-job", "--retries"),
    )[-1]  # fmt: skip
    assert job == same
    signature = inspect.signature(triton.deploy).parameters
    assert (default("deploy triton", "--kind"), default("deploy triton", "--instances")) == (signature["kind"].default, signature["instances"].default)
