"""`champion workflow argo`: the WorkflowTemplate is valid Argo (keys, names, references), round-trips
through hera's models, calls the real step commands, and bad input writes nothing (exit 2)."""

from __future__ import annotations

import copy
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from champion.workflow import argo, spec

ARGS = ["workflow", "argo", "--set", "model.name=wf_cnn", "--models-volume", "champion-models"]


@pytest.fixture(scope="module")
def doc() -> dict:
    from conftest import invoke

    result = invoke(*ARGS)
    assert result.exit_code == 0, result.stderr
    return yaml.safe_load(result.stdout)


def templates(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["spec"]["templates"]}


def tasks(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in templates(doc)[doc["spec"]["entrypoint"]]["dag"]["tasks"]}


def test_the_template_is_valid_argo_and_round_trips_through_hera(doc: dict) -> None:
    from hera.workflows import WorkflowTemplate
    from hera.workflows import models as m

    assert spec.problems(doc) == []
    # Argo's schema as hera's generated models hold it: nothing dropped, nothing added, nothing renamed.
    assert m.WorkflowTemplate.model_validate(doc).model_dump(by_alias=True, exclude_none=True, mode="json") == doc
    assert WorkflowTemplate.from_dict(copy.deepcopy(doc)).to_dict() == doc
    assert doc["kind"] == "WorkflowTemplate" and doc["metadata"]["name"] == argo.dns1123("champion-wf_cnn")


def test_the_dag_runs_the_steps_in_order_with_conditions_on_the_result(doc: dict) -> None:
    t = tasks(doc)
    assert list(t) == ["train", "promote", "card", "export", "validate", "deploy"]
    assert {k: v.get("depends") for k, v in t.items()} == {
        "train": None, "promote": "train", "card": "promote", "export": "promote", "validate": "export", "deploy": "validate",
    }  # fmt: skip
    passed = '"{{tasks.promote.outputs.parameters.result}}" == "passed"'
    assert t["export"]["when"] == passed and t["validate"]["when"] == passed and "when" not in t["card"]
    assert t["deploy"]["when"] == '"{{tasks.validate.outputs.parameters.result}}" == "passed"'
    # Identifiers only travel between steps: every argument is one task's output parameter.
    for task in t.values():
        for p in (task.get("arguments") or {}).get("parameters") or []:
            assert re.fullmatch(r"\{\{tasks\.[a-z]+\.outputs\.parameters\.[a-z-]+\}\}", p["value"]), p


def test_onnx_int8_adds_quantize_and_its_deploy_after_validate(doc: dict) -> None:
    from conftest import invoke

    assert "quantize" not in tasks(doc)  # only when the config asks for the int8 model, as in `champion run`
    result = invoke(*ARGS, "--set", "export.formats=[onnx,onnx_int8]")
    assert result.exit_code == 0, result.stderr
    int8 = yaml.safe_load(result.stdout)
    assert spec.problems(int8) == []
    t = tasks(int8)
    assert list(t)[-2:] == ["quantize", "deploy-int8"]
    assert t["quantize"]["depends"] == "deploy" and t["deploy-int8"]["depends"] == "quantize"  # the float model first
    assert t["quantize"]["when"] == t["deploy"]["when"] == '"{{tasks.validate.outputs.parameters.result}}" == "passed"'
    assert t["deploy-int8"]["when"] == '"{{tasks.quantize.outputs.parameters.result}}" == "passed"'
    assert t["quantize"]["arguments"]["parameters"] == [{"name": "export-run-id", "value": "{{tasks.export.outputs.parameters.export-run-id}}"}]
    tpl = templates(int8)
    assert tpl["quantize"]["container"]["args"][:2] == ["quantize", "--export-run-id"]
    assert "wf_cnn-onnx-int8" in tpl["deploy-int8"]["container"]["args"]
    # Both move @deploy of a model: under the model's mutex, like validate and deploy.
    assert tpl["quantize"]["synchronization"] == tpl["deploy-int8"]["synchronization"] == tpl["validate"]["synchronization"]
    defaults = {p["name"]: p["valueFrom"].get("default") for p in tpl["quantize"]["outputs"]["parameters"]}
    assert defaults == {"result": None, "model-version": "none"}  # a rejection writes no INT8_MODEL_VERSION
    test_every_step_calls_a_real_command_with_options_it_has(int8)


def test_every_step_calls_a_real_command_with_options_it_has(doc: dict) -> None:
    import typer

    from champion.cli import app

    root = typer.main.get_command(app)
    for name, t in templates(doc).items():
        if "container" not in t:
            continue
        c = t["container"]
        assert c["command"] == ["champion"] and c["image"] == f"champion:{version('champion')}" == argo.DEFAULT_IMAGE
        words = [a for a in c["args"] if not a.startswith("-")]
        command = root
        while hasattr(command, "commands") and words and words[0] in command.commands:
            command = command.commands[words.pop(0)]
        known = {opt for p in command.params for opt in p.opts}
        flags = {a for a in c["args"] if a.startswith("--")}
        assert flags <= known, (name, flags - known)
        assert "--output-files" in flags and argo.OUT in c["args"]


def test_outputs_are_read_from_the_output_files_and_those_not_always_written_have_defaults(doc: dict) -> None:
    from champion.cli import OUTPUT_KEYS

    declared = {}
    for name, t in templates(doc).items():
        for p in (t.get("outputs") or {}).get("parameters") or []:
            path = p["valueFrom"]["path"]
            assert path.startswith(argo.OUT + "/") and path.rsplit("/", 1)[1] in OUTPUT_KEYS, path
            declared[(name, p["name"])] = p["valueFrom"].get("default")
    # A rejection prints RESULT and no MODEL_VERSION; Argo fails a step whose output file is missing.
    assert declared[("promote", "model-version")] == "none" and declared[("validate", "model-version")] == "none"
    assert declared[("promote", "result")] is None and declared[("train", "run-id")] is None
    assert {k for k, v in declared.items() if v is not None} == {("promote", "model-version"), ("validate", "model-version")}


def test_credentials_come_from_the_secret_by_reference_and_settings_from_parameters(doc: dict) -> None:
    params = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert params["tracking-uri"] == argo.DEFAULT_TRACKING_URI and params["triton-repository"] == "/models/triton"
    assert yaml.safe_load(params["config"])["model"]["name"] == "wf_cnn"
    for name, t in templates(doc).items():
        if "container" not in t:
            continue
        env = {e["name"]: e for e in t["container"]["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == "{{workflow.parameters.tracking-uri}}"
        assert env["CHAMPION_WORKFLOW_MODE"]["value"] == "1"
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "CHAMPION_API_KEY"):
            assert "value" not in env[key]
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "champion-mlflow", "key": key, "optional": True}
    train = templates(doc)["train"]
    assert train["inputs"]["artifacts"] == [{"name": "config", "path": argo.CONFIG_FILE, "raw": {"data": "{{workflow.parameters.config}}"}}]
    assert {"name": "CHAMPION_WORKFLOW_STEP_ID", "value": "{{workflow.uid}}-train"} in train["container"]["env"]


def test_mutex_named_after_the_model_retries_only_transient_failures_resources_on_train(doc: dict) -> None:
    t = templates(doc)
    mutex = argo.mutex_name("wf_cnn")
    assert spec.DNS1123_LABEL.fullmatch(mutex) and mutex != argo.mutex_name("wf-cnn")
    for name in ("promote", "validate", "deploy"):
        assert t[name]["synchronization"] == {"mutexes": [{"name": mutex}]}
    for name in ("train", "card", "export"):
        assert "synchronization" not in t[name]
    for name, tmpl in t.items():
        if "container" in tmpl:
            assert tmpl["retryStrategy"]["expression"] == "asInt(lastRetry.exitCode) == 75", name
            assert tmpl["retryStrategy"]["retryPolicy"] == "OnFailure"
    assert t["train"]["container"]["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    # Checkpoints on the volume, so that a retried train resumes from them.
    assert "training.checkpoint.dirpath=/models/checkpoints" in t["train"]["container"]["args"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "champion-models"}} in doc["spec"]["volumes"]
    # The image's non-root user can write to the volume.
    assert t["train"]["securityContext"] == t["deploy"]["securityContext"] == {"fsGroup": argo.IMAGE_GID}


def test_gpus_go_on_the_train_step(cli) -> None:
    result = cli("workflow", "argo", "--gpus", "2", "--memory", "16Gi", "--namespace", "ml", "--image", "registry.example.com/ml/champion:1.0")
    assert result.exit_code == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    train = templates(doc)["train"]["container"]
    assert train["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "2"}
    assert train["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert "training.accelerator=gpu" in train["args"] and "training.devices=2" in train["args"]
    assert "nvidia.com/gpu" not in str(templates(doc)["promote"]) and doc["metadata"]["namespace"] == "ml"
    assert {t["container"]["image"] for t in doc["spec"]["templates"] if "container" in t} == {"registry.example.com/ml/champion:1.0"}
    assert spec.problems(doc) == []
    # Without a volume, the Triton repository goes to S3, never the pod's disk.
    params = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert params["triton-repository"].startswith("s3://")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "training.nope=1"], "nope"),
        (["--config", "missing.yaml"], "does not exist"),
        (["--image", "champion 0.1.0"], "not an image reference"),
        (["--name", "my_pipeline"], "DNS-1123"),
        (["--secret", "Bad"], "DNS-1123"),
        (["--tracking-uri", "sqlite:///mlflow.db"], "own disk"),
        (["--triton-repository", "/tmp/triton"], "outlive the pod"),
        (["--memory", "lots"], "quantity"),
        (["--gpus", "-1"], "--gpus"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(workdir: Path, cli, args: list[str], message: str) -> None:
    result = cli("workflow", "argo", *args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stdout == "" and message in result.stderr


def test_checker_rejects_unknown_keys_bad_names_and_undeclared_references(doc: dict) -> None:
    from hera.workflows import models as m

    bad = copy.deepcopy(doc)
    t = templates(bad)
    t["train"]["container"]["imagePulPolicy"] = "Always"  # a typo hera accepts silently
    t["promote"]["retryStrategy"]["limits"] = 3
    m.WorkflowTemplate.model_validate(bad)
    found = spec.problems(bad)
    assert any("imagePulPolicy" in p and "Container has no such field" in p for p in found)
    assert any("retryStrategy.limits" in p for p in found)

    def problems_after(change) -> list[str]:
        changed = copy.deepcopy(doc)
        change(templates(changed), tasks(changed), changed)
        return spec.problems(changed)

    assert any("'pro_mote' is not a DNS-1123" in p for p in problems_after(lambda t, k, d: k["promote"].update(name="pro_mote")))
    assert any("'Train' is not a DNS-1123" in p for p in problems_after(lambda t, k, d: t["train"].update(name="Train")))
    assert any("names no template" in p for p in problems_after(lambda t, k, d: k["card"].update(template="cards")))
    assert any("spec.entrypoint" in p for p in problems_after(lambda t, k, d: d["spec"].update(entrypoint="main")))
    assert any("no such workflow parameter" in p for p in problems_after(
        lambda t, k, d: t["deploy"]["container"]["args"].append("{{workflow.parameters.repository}}")))  # fmt: skip
    assert any("declares no output parameter 'run_id'" in p for p in problems_after(
        lambda t, k, d: k["promote"]["arguments"]["parameters"][0].update(value="{{tasks.train.outputs.parameters.run_id}}")))  # fmt: skip
    assert any("not upstream" in p for p in problems_after(lambda t, k, d: k["export"].update(when='"{{tasks.card.outputs.parameters.model-card}}" == "x"')))
    assert any("input parameter 'run-id', not supplied" in p for p in problems_after(lambda t, k, d: k["card"].pop("arguments")))
    assert any("'run-ids' is not an input parameter" in p for p in problems_after(
        lambda t, k, d: k["card"]["arguments"]["parameters"].append({"name": "run-ids", "value": "x"})))  # fmt: skip
    assert any("declares no such input parameter" in p for p in problems_after(
        lambda t, k, d: t["promote"]["container"]["args"].append("{{inputs.parameters.model}}")))  # fmt: skip
    assert any("volume 'modles'" in p for p in problems_after(lambda t, k, d: t["deploy"]["container"]["volumeMounts"][1].update(name="modles")))
    assert any("'nowhere' is not a task" in p for p in problems_after(lambda t, k, d: k["card"].update(depends="promote && nowhere")))
    assert any("dependency cycle" in p for p in problems_after(lambda t, k, d: k["train"].update(depends="deploy")))
    assert any("expected a list" in p for p in problems_after(lambda t, k, d: t["train"]["container"].update(args="train")))
    with pytest.raises(spec.SpecError, match="not a valid Argo WorkflowTemplate"):
        spec.check({**doc, "kind": "Workflow"})


def test_dns1123_names_are_stable_and_distinct() -> None:
    assert argo.dns1123("champion-digits-cnn") == "champion-digits-cnn"
    assert argo.dns1123("Digits_CNN") != argo.dns1123("digits-cnn")
    long = argo.dns1123("x" * 100)
    assert len(long) <= 63 and spec.DNS1123_LABEL.fullmatch(long)
    assert spec.DNS1123_LABEL.fullmatch(argo.dns1123("__"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata: {name: x}\nspec: {}\n", "is a Workflow, not an Argo WorkflowTemplate"),
        ("apiVersion: batch/v1\nkind: Job\n", "is a Job, not an Argo WorkflowTemplate"),
        ("- just\n- a list\n", "is a list, not an Argo WorkflowTemplate"),
        ("", "is empty, not an Argo WorkflowTemplate"),
        ("kind: [unclosed\n", "is not YAML"),
    ],
)
def test_run_local_refuses_what_is_not_a_workflow_template(workdir: Path, cli, text: str, message: str) -> None:
    (workdir / "wf.yaml").write_text(text)
    result = cli("workflow", "run-local", "wf.yaml")
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not (workdir / "workflow-runs").exists()


def test_a_tracking_uri_with_credentials_is_refused(cli) -> None:
    # The template is applied to a cluster and kept in git: a password there is a leaked password.
    result = cli("workflow", "argo", "--tracking-uri", "https://alice:s3cret-pw@mlflow.example.com")
    assert result.exit_code == 2 and "MLFLOW_TRACKING_PASSWORD" in result.stderr, result.stderr
    assert "https://mlflow.example.com" in result.stderr and "s3cret-pw" not in result.stdout + result.stderr
