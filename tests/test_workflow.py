"""The WorkflowTemplate run end to end on this machine by the local executor: real `champion`
processes, one per step, against one SQLite-backed MLflow store, the Triton repository on a
"volume" (a folder mapped to the claim).

The happy path registers @champion and @deploy and writes the Triton repository; a candidate Gate 1
rejects leaves export, validate and deploy Skipped and the registry untouched with the workflow
Succeeded; promote that cannot reach the tracking server exits 75, is retried, fails the workflow
and nothing after it runs. A retried train resumes, reuses or closes the run of its earlier try.
Two workflows train (the happy and the rejected candidate); everything else reuses their runs.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from champion.train import retry
from champion.workflow import local, mode, spec
from conftest import invoke, module_workdir
from servers import free_port

pytestmark = pytest.mark.slow

MODEL = "wf-cnn"
# One epoch passes a threshold of 0.5; an identical second candidate cannot beat it by min_improvement.
# With onnx_int8, the template quantizes after validate and deploys the int8 model too.
CONFIG = ["--set", f"model.name={MODEL}", "--set", "training.epochs=1", "--set", "promotion_criteria.threshold=0.5",
          "--set", "export.formats=[onnx,onnx_int8]"]  # fmt: skip
STEPS = ("train", "promote", "card", "export", "validate", "deploy", "quantize", "deploy-int8")
PATH = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
# What a step receives from another: run ids, version numbers, the result word.
IDENTIFIER = re.compile(r"[0-9a-f]{32}|[0-9]+|passed|failed")


@dataclass
class Store:
    root: Path
    uri: str
    models: Path  # the folder behind the PersistentVolumeClaim `champion-models`
    doc: dict

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def registry(self) -> dict:
        """Versions and aliases of the model and its ONNX twin: what a rejection or crash must not change."""
        c = self.client()
        return {
            name: ({v.version for v in c.search_model_versions(f"name='{name}'")}, dict(sorted(c.get_registered_model(name).aliases.items())))
            for name in (MODEL, f"{MODEL}-onnx")
        }  # fmt: skip

    def run(self, name: str, doc: dict | None = None) -> local.WorkflowRun:
        return local.run(doc or self.doc, self.root / name, parameters={"tracking-uri": self.uri},
                         claims={"champion-models": self.models}, env=PATH)  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with module_workdir(tmp_path_factory, "workflow") as root:
        made = invoke("workflow", "argo", *CONFIG, "--models-volume", "champion-models")
        assert made.exit_code == 0, made.stderr
        (root / "wf.yaml").write_text(made.stdout)
        yield Store(root, f"sqlite:///{root / 'mlflow.db'}", root / "models", yaml.safe_load(made.stdout))


@pytest.fixture(scope="module")
def happy(store: Store) -> local.WorkflowRun:
    return store.run("happy")


@pytest.fixture(scope="module")
def rejected(store: Store, happy: local.WorkflowRun) -> tuple[local.WorkflowRun, dict]:
    before = store.registry()
    return store.run("rejected"), before


@pytest.fixture(scope="module")
def crashed(store: Store, happy: local.WorkflowRun) -> tuple[local.WorkflowRun, dict, int]:
    """The template from promote on (train done: the happy run's id given to promote and card), with
    promote's tracking server unreachable (a closed port): the transient exit 75, retried once."""
    doc = copy.deepcopy(store.doc)
    templates = {t["name"]: t for t in doc["spec"]["templates"]}
    dag = templates["pipeline"]["dag"]
    dag["tasks"] = [t for t in dag["tasks"] if t["name"] != "train"]
    for task in dag["tasks"]:
        if task["name"] in ("promote", "card"):
            task["arguments"]["parameters"] = [{"name": "run-id", "value": happy.tasks["train"].outputs["run-id"]}]
    del dag["tasks"][0]["depends"]
    env = templates["promote"]["container"]["env"]
    env[[e["name"] for e in env].index("MLFLOW_TRACKING_URI")]["value"] = f"http://127.0.0.1:{free_port()}"
    env += [{"name": "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "value": "0"}, {"name": "MLFLOW_HTTP_REQUEST_TIMEOUT", "value": "5"}]
    templates["promote"]["retryStrategy"]["limit"] = 1  # the real expression; one retry keeps the test short
    assert spec.problems(doc) == []
    before = store.registry()
    exports = len(store.client().search_runs([store.client().get_experiment_by_name("model-exports").experiment_id]))
    return store.run("crashed", doc), before, exports


def check_identifiers_only(doc: dict, run: local.WorkflowRun) -> None:
    """Every argument a step got from another is an identifier; no argument carries data or config."""
    templates = {t["name"]: t for t in doc["spec"]["templates"]}
    for name, task in run.tasks.items():
        if not task.command:
            continue
        raw = templates[name]["container"]["args"]
        assert len(raw) == len(task.command) - 1
        for written, given in zip(raw, task.command[1:]):
            assert re.fullmatch(r"[A-Za-z0-9_.:/=@+-]{1,200}", given), (name, given)
            if "{{inputs.parameters." in written:
                assert IDENTIFIER.fullmatch(given), (name, written, given)


def test_happy_path_registers_champion_and_deploy_and_writes_the_triton_repository(store: Store, happy: local.WorkflowRun) -> None:
    assert happy.phase == "Succeeded", {k: (t.phase, t.message) for k, t in happy.tasks.items()}
    assert {k: t.phase for k, t in happy.tasks.items()} == dict.fromkeys(STEPS, "Succeeded")
    out = {k: t.outputs for k, t in happy.tasks.items()}
    run_id = out["train"]["run-id"]
    assert out["promote"]["result"] == "passed" and out["validate"]["result"] == "passed"
    c = store.client()
    champion = c.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == run_id and str(champion.version) == out["promote"]["model-version"] == out["export"]["model-version"]
    deployed = c.get_model_version_by_alias(f"{MODEL}-onnx", "deploy")
    assert str(deployed.version) == out["validate"]["model-version"] == out["deploy"]["triton-model-version"]
    assert deployed.tags["parent_run_id"] == run_id
    # The repository is on the volume (the container's /models), not the pod's own disk.
    assert out["deploy"]["triton-model-dir"] == f"/models/triton/{MODEL}"
    repo = store.models / "triton" / MODEL
    assert (repo / str(deployed.version) / "model.onnx").is_file() and f'name: "{MODEL}"' in (repo / "config.pbtxt").read_text()
    # The int8 gate judged the same export; its model is @deploy of <model>-onnx-int8 and in the repository beside the float one.
    int8 = c.get_model_version_by_alias(f"{MODEL}-onnx-int8", "deploy")
    assert out["quantize"]["result"] == "passed" and str(int8.version) == out["quantize"]["model-version"] == out["deploy-int8"]["triton-model-version"]
    assert int8.tags["parent_export_run_id"] == out["export"]["export-run-id"]
    assert out["deploy-int8"]["triton-model-dir"] == f"/models/triton/{MODEL}-int8"
    assert (store.models / "triton" / f"{MODEL}-int8" / str(int8.version) / "model.onnx").is_file()
    # The card is written and logged to the run; the run knows its workflow step.
    assert out["card"]["model-card"].startswith("/champion/cards/")
    assert "model_card/model_card.md" in {a.path for a in c.list_artifacts(run_id, "model_card")}
    assert c.get_run(run_id).data.tags[mode.STEP_TAG] == f"{happy.uid}-train"
    check_identifiers_only(store.doc, happy)


def test_a_gate1_rejection_skips_export_validate_deploy_and_the_workflow_succeeds(store: Store, rejected) -> None:
    run, before = rejected
    assert run.phase == "Succeeded", {k: (t.phase, t.message) for k, t in run.tasks.items()}
    assert {k: t.phase for k, t in run.tasks.items()} == {
        "train": "Succeeded", "promote": "Succeeded", "card": "Succeeded", "export": "Skipped", "validate": "Skipped", "deploy": "Skipped",
        "quantize": "Skipped", "deploy-int8": "Skipped",
    }  # fmt: skip
    promote = run.tasks["promote"]
    assert promote.exit_code == 0 and promote.outputs["result"] == "failed" and promote.outputs["model-version"] == "none"
    assert promote.outputs["decided-by"] == "improvement_over_champion"
    assert store.registry() == before
    assert sorted(p.name for p in (store.models / "triton" / MODEL).iterdir() if p.name.isdigit()) == ["1"]
    candidate = run.tasks["train"].outputs["run-id"]
    assert store.client().get_run(candidate).data.tags["gate1.result"] == "failed"
    assert "model_card/model_card.md" in {a.path for a in store.client().list_artifacts(candidate, "model_card")}  # every candidate gets a card
    check_identifiers_only(store.doc, run)


def test_a_crash_in_promote_fails_the_workflow_and_nothing_after_it_runs(store: Store, crashed) -> None:
    run, before, exports = crashed
    assert run.phase == "Failed"
    assert list(run.tasks) == ["promote"]
    promote = run.tasks["promote"]
    assert promote.phase == "Failed" and promote.exit_code == 75 and promote.attempts == 2  # transient: retried, then failed
    assert "MLflow could not" in (promote.folder / "try-2" / "stderr").read_text()
    assert not (run.folder / "card").exists() and not (run.folder / "export").exists()
    assert store.registry() == before
    c = store.client()
    assert len(c.search_runs([c.get_experiment_by_name("model-exports").experiment_id])) == exports


def test_workflow_mode_turns_a_rejection_into_exit_0_and_only_there(store: Store, rejected, monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = rejected
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    candidate = run.tasks["train"].outputs["run-id"]
    plain = invoke("promote", "--run-id", candidate, "--quiet")
    assert plain.exit_code == 3 and plain.values["RESULT"] == "failed", plain.stderr
    monkeypatch.setenv(mode.MODE_ENV, "1")
    in_workflow = invoke("promote", "--run-id", candidate, "--quiet")
    assert in_workflow.exit_code == 0 and in_workflow.values["RESULT"] == "failed", in_workflow.stderr
    monkeypatch.setenv(mode.MODE_ENV, "maybe")
    assert invoke("promote", "--run-id", candidate).exit_code == 2


def test_a_retried_train_reuses_the_run_its_earlier_try_finished(store: Store, happy: local.WorkflowRun, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = happy.tasks["train"].outputs["run-id"]
    c = store.client()
    experiment = c.get_experiment_by_name("champion").experiment_id
    runs = len(c.search_runs([experiment]))
    for key, value in {"MLFLOW_TRACKING_URI": store.uri, mode.MODE_ENV: "1", mode.STEP_ENV: f"{happy.uid}-train"}.items():
        monkeypatch.setenv(key, value)
    again = invoke("train", *CONFIG, "--quiet")
    assert again.exit_code == 0 and again.values["RUN_ID"] == run_id, again.stderr
    assert "nothing is trained again" in again.stderr and len(c.search_runs([experiment])) == runs


def test_a_retried_train_resumes_its_earlier_run_and_closes_any_other(store: Store, rejected, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rejected candidate's run stands in for an earlier try of its step (it is no champion, and
    # resuming it changes nothing the rejection test checks): no second training in this module.
    run, _ = rejected
    run_id = run.tasks["train"].outputs["run-id"]
    c = store.client()
    step = c.get_run(run_id).data.tags[mode.STEP_TAG]
    # The earlier try died after its last checkpoint (on the volume), before it could finish the run...
    c.set_terminated(run_id, "FAILED")
    # ...and another try left a run with nothing to resume from (its checkpoints were on the pod's disk).
    orphan = c.create_run(c.get_run(run_id).info.experiment_id, run_name=MODEL, tags={mode.STEP_TAG: step}).info.run_id
    for key, value in {"MLFLOW_TRACKING_URI": store.uri, mode.MODE_ENV: "1", mode.STEP_ENV: step}.items():
        monkeypatch.setenv(key, value)
    resumed = invoke("train", *CONFIG, "--set", f"training.checkpoint.dirpath={store.models / 'checkpoints'}", "--quiet")
    assert resumed.exit_code == 0 and resumed.values["RUN_ID"] == run_id, resumed.stderr
    runs = {r.info.run_id: r for r in c.search_runs([c.get_run(run_id).info.experiment_id], f"tags.`{mode.STEP_TAG}` = '{step}'")}
    assert set(runs) == {run_id, orphan}  # no second run beside the first
    assert runs[run_id].info.status == "FINISHED" and runs[orphan].info.status == "FAILED"
    assert runs[orphan].data.tags[retry.SUPERSEDED_TAG] == "true"


def test_a_retry_with_nothing_to_resume_closes_the_earlier_run_and_starts_anew(store: Store, happy, monkeypatch: pytest.MonkeyPatch) -> None:
    c = store.client()
    experiment = c.get_experiment_by_name("champion").experiment_id
    earlier = c.create_run(experiment, run_name=MODEL, tags={mode.STEP_TAG: "uid-1-train"}).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv(mode.STEP_ENV, "uid-1-train")
    assert retry.step_tags() == {mode.STEP_TAG: "uid-1-train"}
    assert retry.earlier_try("champion", lambda run_id: False) is None  # a new run starts
    closed = c.get_run(earlier)
    assert closed.info.status == "FAILED" and closed.data.tags[retry.SUPERSEDED_TAG] == "true"
    monkeypatch.setenv(mode.STEP_ENV, "uid 1")
    with pytest.raises(local.ConfigError, match="CHAMPION_WORKFLOW_STEP_ID"):
        retry.earlier_try("champion", lambda run_id: False)


def test_run_local_command_prints_each_task(workdir: Path, cli) -> None:
    """The CLI over the same executor: a tiny template (no training) to show the output and the exit code."""
    doc = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "hello"},
        "spec": {"entrypoint": "main", "arguments": {"parameters": [{"name": "code", "value": "0"}]}, "templates": [
            {"name": "exit", "inputs": {"parameters": [{"name": "code"}]},
             "container": {"image": "python:3.11", "command": ["python", "-c", "import sys; sys.exit(int(sys.argv[1]))"], "args": ["{{inputs.parameters.code}}"]}},
            {"name": "main", "dag": {"tasks": [{"name": "exit", "template": "exit", "arguments": {"parameters": [{"name": "code", "value": "{{workflow.parameters.code}}"}]}}]}},
        ]},
    }  # fmt: skip
    (workdir / "hello.yaml").write_text(yaml.safe_dump(doc))
    ok = cli("workflow", "run-local", "hello.yaml", "--env", f"PATH={PATH['PATH']}", "-q")
    assert ok.exit_code == 0 and ok.values["WORKFLOW_PHASE"] == "Succeeded", ok.stderr
    assert ok.stdout.splitlines()[0].split("\t")[:3] == ["exit", "Succeeded", "exit 0"]
    assert Path(ok.values["WORKFLOW_FOLDER"]).parent == workdir / "workflow-runs"
    failed = cli("workflow", "run-local", "hello.yaml", "-p", "code=4", "--env", f"PATH={PATH['PATH']}", "--workdir", "failed", "-q")
    assert failed.exit_code == 1 and failed.values["WORKFLOW_PHASE"] == "Failed"
    assert failed.stdout.splitlines()[0].split("\t")[:3] == ["exit", "Failed", "exit 4"]
    again = cli("workflow", "run-local", "hello.yaml", "--workdir", "failed")
    assert again.exit_code == 2 and "already holds a run" in again.stderr
