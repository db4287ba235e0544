"""`champion run` reuses an identical finished training instead of repeating it.

The second run of the same config on the same data from the same clean git commit (or, outside a
git checkout, the same champion source) is not trained: the identical run is recorded as a new run,
Quality Gate 1 rejects it as it rejects a retrained twin (exit 3) and the message names the
identical run. `--force-train`, a dirty tree, other settings or non-deterministic training are
trained anew, and a run that trains says why in one line. Real SQLite-backed MLflow, digits.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import FAST, ShipModel, Shipped, invoke, module_workdir

NAME = "digits-cnn"
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def gate_report(run_id: str, folder: Path) -> dict:
    return json.loads(Path(client().download_artifacts(run_id, "gate_report.json", str(folder))).read_text())


# --- which trainings can be identical: no MLflow, no training --------------------------------------


def config(*overrides: str):
    from champion.config import load_config

    return load_config(overrides=list(overrides))


CLEAN = {"git.commit": "a" * 40, "git.branch": "main", "git.dirty": "false"}


@pytest.mark.parametrize(
    "overrides, why",
    [
        (["training.deterministic=false"], "deterministic is false"),
        (["training.devices=2"], "several processes"),
        (["training.num_nodes=2"], "several processes"),
        (["model.pretrained=models:/digits-cnn@champion"], "registered model"),
        (["training.accelerator=gpu"], "training.accelerator is gpu"),
        (["training.accelerator=auto"], "training.accelerator is auto"),
    ],
)
def test_outcomes_that_are_not_a_function_of_the_inputs_are_never_reused(overrides: list[str], why: str) -> None:
    from champion.train import reuse

    cfg = config(*overrides)
    assert why in reuse.ineligible(cfg)
    assert reuse.fingerprint(cfg, "d" * 16, CLEAN) is None


def test_export_only_is_never_reused() -> None:
    from champion.train import reuse

    assert "--checkpoint" in reuse.ineligible(config(), Path("weights.ckpt"))


NO_GIT = {"git.commit": "unknown", "git.branch": "unknown", "git.dirty": "unknown"}


def test_fingerprint_needs_a_clean_tree_and_covers_config_data_and_code() -> None:
    from champion.train import reuse

    cfg = config()
    key = reuse.fingerprint(cfg, "d" * 16, CLEAN)
    assert key is not None and key == reuse.fingerprint(config(), "d" * 16, dict(CLEAN))  # a function of its inputs
    assert reuse.fingerprint(cfg, "d" * 16, CLEAN | {"git.dirty": "true"}) is None
    assert "uncommitted changes" in reuse.unnamed_code(CLEAN | {"git.dirty": "true"})
    # Outside a git checkout champion's own source digest names the code.
    outside = reuse.fingerprint(cfg, "d" * 16, NO_GIT)
    assert outside is not None and reuse.unnamed_code(NO_GIT) is None and reuse.unnamed_code(CLEAN) is None
    others = {
        outside,
        reuse.fingerprint(config("training.seed=43"), "d" * 16, CLEAN),
        reuse.fingerprint(config("training.learning_rate=0.002"), "d" * 16, CLEAN),
        reuse.fingerprint(config("training.learning_rate=0.002"), "d" * 16, NO_GIT),
        reuse.fingerprint(cfg, "e" * 16, CLEAN),
        reuse.fingerprint(cfg, "e" * 16, NO_GIT),
        reuse.fingerprint(cfg, "d" * 16, CLEAN | {"git.commit": "b" * 40}),
    }
    assert key not in others and len(others) == 7


def test_the_source_digest_covers_the_whole_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Not only train/: a change to ingest, config or the preprocessing changes what trains."""
    import champion
    from champion.train import reuse

    modules = {p.relative_to(Path(champion.__file__).parent).parts[0] for p in Path(champion.__file__).parent.rglob("*.py")}
    assert {"ingest", "config", "train", "preprocessing.py"} <= modules
    before = reuse.source_digest()
    reuse.source_digest.cache_clear()
    try:
        import shutil

        copy = tmp_path / "champion"
        shutil.copytree(Path(champion.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
        (copy / "ingest" / "splits.py").write_text((copy / "ingest" / "splits.py").read_text() + "\n# changed\n")
        monkeypatch.setattr(reuse, "__file__", str(copy / "train" / "reuse.py"))
        assert reuse.source_digest() != before
    finally:
        reuse.source_digest.cache_clear()


def test_another_thread_count_is_another_training(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deterministic algorithms repeat their numbers only for the same split of the work.
    from champion.train import reuse

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = reuse.fingerprint(config(), "d" * 16, CLEAN)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert reuse.fingerprint(config(), "d" * 16, CLEAN) != before


def test_a_pretrained_file_is_identified_by_its_content(tmp_path: Path) -> None:
    from champion.train import reuse

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"one")
    cfg = config(f"model.pretrained={weights}", "model.approach=fine_tuning")
    before = reuse.fingerprint(cfg, "d" * 16, CLEAN)
    weights.write_bytes(b"two")
    assert reuse.fingerprint(cfg, "d" * 16, CLEAN) != before


def test_only_a_finished_run_with_a_ready_logged_model_is_found(workdir: Path) -> None:
    from mlflow.entities import LoggedModelStatus

    from champion.registry import tracking
    from champion.train import reuse

    tracking.setup_tracking()
    c = client()
    exp = c.create_experiment("reuse")
    key = "f" * 64

    def run(status: str, model_uri: str | None) -> str:
        tags = {reuse.FINGERPRINT_TAG: key, **({"model_uri": model_uri} if model_uri else {})}
        run_id = c.create_run(exp, run_name=NAME, tags=tags).info.run_id
        c.set_terminated(run_id, status)
        return run_id

    pending = c.create_logged_model(exp, name="model")
    ready = c.create_logged_model(exp, name="model")
    c.finalize_logged_model(ready.model_id, LoggedModelStatus.READY)
    run("FAILED", f"models:/{ready.model_id}")
    run("FINISHED", None)
    run("FINISHED", f"models:/{pending.model_id}")  # the upload never finished
    run("FINISHED", "models:/m-doesnotexist")
    assert reuse.find_identical("reuse", NAME, key) is None
    good = run("FINISHED", f"models:/{ready.model_id}")
    found = reuse.find_identical("reuse", NAME, key)
    assert found is not None and found.run_id == good and found.model_uri == f"models:/{ready.model_id}"
    assert reuse.find_identical("reuse", NAME, "0" * 64) is None
    assert reuse.find_identical("no-such-experiment", NAME, key) is None


# --- end to end: champion run twice in a clean git checkout --------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean git checkout as the working folder, so that the code commit is known."""
    with module_workdir(tmp_path_factory, "reuse") as root:
        (root / "tracked.txt").write_text("v1\n")
        subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
        subprocess.run([*GIT, "add", "tracked.txt"], cwd=root, check=True)
        subprocess.run([*GIT, "commit", "-q", "-m", "v1"], cwd=root, check=True)
        yield root


@pytest.fixture(scope="module")
def first(repo: Path, shipped_model: ShipModel) -> Shipped:
    """`champion run` as FAST (3 epochs) in the checkout: the training the later runs find identical."""
    return shipped_model(NAME, epochs=3, store=repo)


@pytest.mark.slow
def test_second_run_reuses_the_identical_training_and_gate1_rejects_it(repo: Path, first) -> None:
    c = client()
    first_id = first.values["RUN_ID"]
    again = invoke("run", *FAST)
    assert again.exit_code == 3, again.stderr  # the README's promise: Gate 1 rejects the identical candidate
    assert again.values["RESULT"] == "failed" and "EXPORT_RUN_ID" not in again.values
    assert f"identical training found: run {first_id}" in again.stderr
    reused_id = again.values["RUN_ID"]
    assert reused_id != first_id
    assert not (repo / "checkpoints" / reused_id).exists()  # nothing was trained

    original, reused = c.get_run(first_id), c.get_run(reused_id)
    assert reused.info.status == "FINISHED" and reused.info.run_name == NAME
    assert reused.data.tags["reused_run_id"] == first_id
    assert reused.data.tags["model_uri"] == original.data.tags["model_uri"]
    assert "training.fingerprint" not in reused.data.tags  # a reuse is never itself found as an original
    assert reused.data.metrics == original.data.metrics and reused.data.params == original.data.params
    for key in ("val_accuracy", "train_loss", "best_val_accuracy"):
        assert [(m.step, m.value) for m in c.get_metric_history(reused_id, key)] == [
            (m.step, m.value) for m in c.get_metric_history(first_id, key)
        ], key
    assert reused.inputs.dataset_inputs[0].dataset.digest == original.data.tags["data.digest"]
    assert {"config.yaml", "evaluation.json", "gate_report.json", "model_card"} <= {a.path for a in c.list_artifacts(reused_id)}

    report = gate_report(reused_id, repo / "reused")
    assert report["result"] == "failed" and report["decided_by"] == "improvement_over_champion"
    assert report["champion"]["run_id"] == first_id and report["candidate"]["value"] == original.data.metrics["best_val_accuracy"]
    assert [str(v.version) for v in c.search_model_versions(f"name='{NAME}'")] == ["1"]  # registry untouched
    # The identical run's own records are left as they were.
    assert gate_report(first_id, repo / "first")["result"] == "passed"
    assert c.get_run(first_id).data.tags["gate1.result"] == "passed"
    # So is the champion's card: the rejected run's goes to its own folder, and MODEL_CARD names that one.
    champion_card = repo / "outputs" / NAME / "model_card" / "model_card.md"
    assert Path(first.values["MODEL_CARD"]) == champion_card.relative_to(repo) and "Result: **passed**" in champion_card.read_text()
    assert Path(again.values["MODEL_CARD"]) == Path("outputs", NAME, "runs", reused_id, "model_card.md")
    assert "Result: **failed**" in Path(again.values["MODEL_CARD"]).read_text()
    # Its plots are the identical run's, copied rather than drawn again (the same numbers, the same code).
    runs = repo / "outputs" / NAME / "runs"
    for plot in ("confusion_matrix", "per_class_accuracy", "training_loss", "training_accuracy"):
        assert (runs / reused_id / "plots" / f"{plot}.png").read_bytes() == (runs / first_id / "plots" / f"{plot}.png").read_bytes()
    assert {a.path for a in c.list_artifacts(reused_id, "model_card/plots")} == {
        f"model_card/plots/{plot}.png" for plot in ("confusion_matrix", "per_class_accuracy", "training_loss", "training_accuracy")
    }


@pytest.mark.slow
def test_force_train_trains_again_identically(repo: Path, first) -> None:
    c = client()
    forced = invoke("run", *FAST, "--force-train")
    assert forced.exit_code == 3, forced.stderr
    assert "identical training found" not in forced.stderr
    run = c.get_run(forced.values["RUN_ID"])
    assert "reused_run_id" not in run.data.tags and (repo / "checkpoints" / forced.values["RUN_ID"]).is_dir()
    # The same training: the same fingerprint and, deterministic, the same numbers.
    original = c.get_run(first.values["RUN_ID"])
    assert run.data.tags["training.fingerprint"] == original.data.tags["training.fingerprint"]
    assert run.data.metrics["best_val_accuracy"] == original.data.metrics["best_val_accuracy"]


@pytest.mark.slow
def test_a_dirty_tree_is_never_identical(repo: Path, first) -> None:
    tracked = repo / "tracked.txt"
    tracked.write_text("v2, not committed\n")
    try:
        result = invoke("run", *FAST)
    finally:
        tracked.write_text("v1\n")
    assert result.exit_code == 3, result.stderr
    assert "identical training found" not in result.stderr
    assert "not reusing an earlier training: the working tree has uncommitted changes" in result.stderr
    run = client().get_run(result.values["RUN_ID"])
    assert run.data.tags["git.dirty"] == "true"
    assert "reused_run_id" not in run.data.tags and "training.fingerprint" not in run.data.tags


@pytest.mark.slow
def test_a_reused_training_that_passes_is_registered_for_the_run_that_reused_it(repo: Path, first) -> None:
    """The identical run was rejected; the stored bar is lowered; the reuse passes. Everything after
    Gate 1 (the version, the export, Gate 2's tags, a retried promote) names the reusing run, and
    the identical run's own records stay as they were."""
    c = client()
    name = ["--set", "model.name=reuse-passes"]
    weak = invoke("run", *name, "--set", "training.epochs=1", "--set", "promotion_criteria.threshold=0.5", "--quiet")
    assert weak.exit_code == 0, weak.stderr  # a weak champion, and the model's stored policy
    assert invoke("models", "policy", "reuse-passes", "--set", "promotion_criteria.threshold=0.9999").exit_code == 0
    rejected = invoke("run", *name, *FAST)
    assert rejected.exit_code == 3 and rejected.values["RESULT"] == "failed", rejected.stderr
    original = rejected.values["RUN_ID"]
    assert invoke("models", "policy", "reuse-passes", "--set", "promotion_criteria.threshold=0.5").exit_code == 0

    passed = invoke("run", *name, *FAST)
    assert passed.exit_code == 0 and passed.values["RESULT"] == "passed", passed.stderr
    assert f"identical training found: run {original}" in passed.stderr
    reusing = passed.values["RUN_ID"]
    version = c.get_model_version("reuse-passes", passed.values["MODEL_VERSION"])
    assert version.tags["run_id"] == reusing and version.run_id == original  # MLflow's own field: the run that logged the model
    assert c.get_run(passed.values["EXPORT_RUN_ID"]).data.tags["parent_run_id"] == reusing
    tags = c.get_run(reusing).data.tags
    assert tags["gate1.result"] == "passed" and tags["export.run_id"] == passed.values["EXPORT_RUN_ID"] and tags["gate2.result"] == "passed"
    untouched = c.get_run(original).data.tags
    assert untouched["gate1.result"] == "failed" and not {"export.run_id", "gate2.result"} & set(untouched)

    again = invoke("promote", "--run-id", reusing, "--quiet")  # a retried step: the same answer, nothing changed
    assert again.exit_code == 0 and again.values["MODEL_VERSION"] == passed.values["MODEL_VERSION"], again.stderr
    other = invoke("promote", "--run-id", original, "--quiet")  # rejected before: not the champion now either
    assert other.exit_code == 3 and other.values["RESULT"] == "failed", other.stderr


def test_a_tree_git_cannot_read_is_not_clean(tmp_path: Path) -> None:
    """`git status` failing (here a corrupt index) says nothing about the tree: never "clean", never reused."""
    from champion.registry import tracking
    from champion.train import reuse

    (tmp_path / "tracked.txt").write_text("v1\n")
    for args in (["init", "-q"], ["add", "tracked.txt"], ["commit", "-q", "-m", "v1"]):
        subprocess.run([*GIT, *args], cwd=tmp_path, check=True)
    assert tracking.git_tags(tmp_path)["git.dirty"] == "false"
    (tmp_path / ".git" / "index").write_bytes(b"not an index")
    tags = tracking.git_tags(tmp_path)
    assert tags["git.commit"] != "unknown" and tags["git.dirty"] == "unknown"
    assert reuse.fingerprint(config(), "d" * 16, tags) is None


@pytest.mark.slow
def test_a_resumed_run_is_never_identical(repo: Path, first) -> None:
    """Resuming seeds afresh (a checkpoint holds no random-number state): the run loses its fingerprint."""
    from champion.train import reuse, run as train

    c = client()
    experiment = c.get_run(first.values["RUN_ID"]).info.experiment_id
    run = c.create_run(experiment, tags={reuse.FINGERPRINT_TAG: "f" * 64})
    train._drop_fingerprint(run.info.run_id)
    assert reuse.FINGERPRINT_TAG not in c.get_run(run.info.run_id).data.tags
    c.delete_run(run.info.run_id)


# --- outside a git checkout: champion's source digest names the code --------------------------------


@pytest.mark.slow
def test_outside_git_an_identical_run_is_reused_and_a_changed_config_is_not(workdir: Path) -> None:
    from champion.registry import tracking

    assert tracking.git_tags()["git.commit"] == "unknown"  # the test's folder is no checkout
    name = ["--set", "model.name=no-git", "--set", "training.epochs=1", "--quiet"]
    first = invoke("run", *name)
    assert first.exit_code in (0, 3), first.stderr  # whether one epoch passes the bar does not matter here
    first_id = first.values["RUN_ID"]
    assert "not reusing an earlier training: no identical finished training in experiment 'champion'" in first.stderr

    again = invoke("run", *name)
    c = client()  # of this folder's store, which the run has just set up
    assert again.exit_code == 3, again.stderr
    assert f"identical training found: run {first_id}" in again.stderr and "champion source " in again.stderr
    assert c.get_run(again.values["RUN_ID"]).data.tags["reused_run_id"] == first_id

    changed = invoke("run", *name, "--set", "training.learning_rate=0.002")
    assert changed.exit_code in (0, 3), changed.stderr
    assert "identical training found" not in changed.stderr
    lines = [line for line in changed.stderr.splitlines() if line.startswith("not reusing")]
    assert lines == ["not reusing an earlier training: no identical finished training in experiment 'champion'; training."]
    run = c.get_run(changed.values["RUN_ID"])
    assert "reused_run_id" not in run.data.tags and run.data.tags["training.fingerprint"] != c.get_run(first_id).data.tags["training.fingerprint"]
