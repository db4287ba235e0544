"""`champion deploy training-job` writes a batch/v1 Job (and its ConfigMap) that Kubernetes' own models accept.

Each document is walked strictly against the `kubernetes` client's models (a key they do not define
fails, where the client itself would drop it silently), then deserialized into V1Job / V1ConfigMap
and serialized back unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import invoke
from kube_models import check, validate

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "configs" / "mnist.yaml"
URI = "http://mlflow.mlflow.svc:5000"
IMAGE = "registry.example.com/ml/champion:0.1.0"


def job(*args: str, image: str | None = IMAGE):
    extra = ("--image", image) if image is not None else ()
    return invoke("deploy", "training-job", "--tracking-uri", URI, *extra, *args)


def documents(text: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for doc in docs:
        validate(doc, {"Job": "V1Job", "ConfigMap": "V1ConfigMap"}[doc["kind"]])
    return docs


def container(job_doc: dict[str, Any]) -> dict[str, Any]:
    (only,) = job_doc["spec"]["template"]["spec"]["containers"]
    return only


def env(job_doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(job_doc)["env"]}


def test_default_job_runs_champion_run(workdir: Path) -> None:
    result = job()
    assert result.exit_code == 0, result.stderr
    (doc,) = documents(result.stdout)
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "Job")
    assert doc["metadata"]["name"] == "train-digits-cnn"  # from model.name of the default config
    spec = doc["spec"]
    pod = spec["template"]["spec"]
    c = container(doc)
    assert c["image"] == IMAGE and c["args"] == ["run"]  # the image's entry point is `champion`
    assert "command" not in c
    assert env(doc) == {
        "MLFLOW_TRACKING_URI": {"name": "MLFLOW_TRACKING_URI", "value": URI},
        # Workflow mode: a rejection completes the Job, a transient failure exits 75 ...
        "CHAMPION_WORKFLOW_MODE": {"name": "CHAMPION_WORKFLOW_MODE", "value": "1"},
        # ... and a retried pod finds its earlier try's run by the Job's uid (the same in every retry).
        "CHAMPION_WORKFLOW_STEP_ID": {
            "name": "CHAMPION_WORKFLOW_STEP_ID",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}},
        },
    }
    assert pod["restartPolicy"] == "Never" and pod["securityContext"] == {"runAsNonRoot": True}
    assert spec["backoffLimit"] == 2
    # Only a transient failure (exit 75: a server not reached) is retried; anything else fails the Job at once.
    count, fail = spec["podFailurePolicy"]["rules"]
    assert count == {"action": "Count", "onExitCodes": {"containerName": "champion", "operator": "In", "values": [75]}}
    assert fail == {"action": "FailJob", "onExitCodes": {"containerName": "champion", "operator": "NotIn", "values": [75]}}
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_mlflow_credentials_come_from_the_secret_by_reference(workdir: Path) -> None:
    result = job("--mlflow-secret", "mlflow-credentials", "--s3-secret", "minio-keys", "--s3-endpoint", "http://minio:9000")
    assert result.exit_code == 0, result.stderr
    (doc,) = documents(result.stdout)
    variables = env(doc)
    for name, secret, key in [
        ("MLFLOW_TRACKING_USERNAME", "mlflow-credentials", "username"),
        ("MLFLOW_TRACKING_PASSWORD", "mlflow-credentials", "password"),
        ("AWS_ACCESS_KEY_ID", "minio-keys", "AWS_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "minio-keys", "AWS_SECRET_ACCESS_KEY"),
    ]:
        assert variables[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        assert "value" not in variables[name]  # never inlined
    assert variables["MLFLOW_TRACKING_URI"]["value"] == URI
    assert variables["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"


def test_config_travels_in_a_configmap(workdir: Path) -> None:
    from champion.config import load_config

    result = job("--config", str(MNIST), "--set", "training.epochs=3", "--step", "train", "--namespace", "ml")
    assert result.exit_code == 0, result.stderr
    config_map, doc = documents(result.stdout)
    assert config_map["kind"] == "ConfigMap" and doc["kind"] == "Job"
    assert config_map["data"] == {"config.yaml": MNIST.read_text()}  # the file as it is, comments and all
    assert doc["metadata"]["name"] == "train-mnist-cnn" and doc["metadata"]["namespace"] == "ml"
    assert config_map["metadata"]["namespace"] == "ml"
    c = container(doc)
    assert c["args"] == ["train", "--config", "/etc/champion/config.yaml", "--set", "training.epochs=3"]
    assert {"name": "config", "mountPath": "/etc/champion", "readOnly": True} in c["volumeMounts"]
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    # What the pod will load is what was checked here.
    shipped = workdir / "shipped.yaml"
    shipped.write_text(config_map["data"]["config.yaml"])
    assert load_config(shipped, ["training.epochs=3"]) == load_config(MNIST, ["training.epochs=3"])


def test_gpus_are_requested_and_used(workdir: Path) -> None:
    from champion.config import load_config

    result = job("--gpus", "2", "--cpu", "8", "--memory", "32Gi")
    assert result.exit_code == 0, result.stderr
    (doc,) = documents(result.stdout)
    c = container(doc)
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"}}
    sets = [c["args"][i + 1] for i, a in enumerate(c["args"]) if a == "--set"]
    cfg = load_config(None, sets)
    assert (cfg.training.accelerator, cfg.training.devices) == ("gpu", 2)


def test_output_file_and_names(workdir: Path) -> None:
    out = workdir / "job.yaml"
    result = job("--set", "model.name=My_Model", "--output", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    (doc,) = documents(out.read_text())
    name = doc["metadata"]["name"]
    assert name.startswith("train-my-model-") and len(name) <= 63  # '_' is refused by Kubernetes: hashed, not clashing
    other = job("--set", "model.name=my-model")
    assert documents(other.stdout)[0]["metadata"]["name"] == "train-my-model"


def test_default_image_is_the_workflows(workdir: Path) -> None:
    from champion.workflow import argo

    result = job(image=None)
    assert result.exit_code == 0, result.stderr
    assert container(documents(result.stdout)[0])["image"] == argo.DEFAULT_IMAGE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "training.epoch=3"), "training.epoch: unknown key"),
        (("--set", "training.epochs=zero"), "training.epochs"),
        (("--config", "missing.yaml"), "does not exist"),
        (("--image", "champion 0.1.0"), "--image 'champion 0.1.0': not an image reference"),
        (("--image", "Champion:0.1.0"), "not an image reference"),
        (("--tracking-uri", "mlflow.db"), "--tracking-uri"),
        (("--tracking-uri", "sqlite:///mlflow.db"), "lost with it"),
        (("--mlflow-secret", "MLflow_Creds"), "--mlflow-secret"),
        (("--s3-endpoint", "minio:9000"), "--s3-endpoint"),
        (("--name", "train_digits"), "'_' and '.' are refused"),
        (("--step", "promote"), "--step 'promote'"),
        (("--cpu", "lots"), "--cpu"),
        (("--gpus", "-2"), "--gpus -2"),
        (("--retries", "-1"), "--retries -1"),
        (("--set", "training.accelerator=gpu"), "add --gpus K"),
        (("--gpus", "1", "--set", "training.devices=4"), "training.devices=4 but --gpus 1"),
        (("--set", "training.num_nodes=2"), "one pod per node"),
        (("--epochs", "3"), "No such option"),
    ],
)
def test_bad_input_is_exit_2_and_writes_nothing(workdir: Path, args: tuple[str, ...], message: str) -> None:
    out = workdir / "job.yaml"
    result = job(*args, "--output", str(out))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr, result.stderr
    assert list(workdir.iterdir()) == []


def test_the_model_check_refuses_unknown_keys(workdir: Path) -> None:
    """The client ignores unknown keys; the walk does not: a misspelt field fails, with its path."""
    (doc,) = documents(job("--mlflow-secret", "creds").stdout)
    for mutate in [
        lambda d: d["spec"].__setitem__("backoffLimits", 1),
        lambda d: env(d)["MLFLOW_TRACKING_PASSWORD"]["valueFrom"].__setitem__("secretKeyRefs", {}),
        lambda d: container(d).__setitem__("resource", {}),
        lambda d: d["spec"]["template"]["spec"].__setitem__("restartPolicy", 0),
    ]:
        broken = yaml.safe_load(yaml.safe_dump(doc))
        mutate(broken)
        with pytest.raises(AssertionError):
            check(broken, "V1Job")


def test_a_tracking_uri_with_credentials_is_refused(cli) -> None:
    result = cli("deploy", "training-job", "--tracking-uri", "https://alice:s3cret-pw@mlflow.example.com")
    assert result.exit_code == 2 and "--mlflow-secret" in result.stderr, result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
