"""`champion deploy kserve` writes an InferenceService that KServe's v1beta1 API accepts.

The Kubernetes client has no model for KServe's custom resource, so the fields KServe defines are
written out below from its API types (kserve/kserve, pkg/apis/serving/v1beta1: inference_service.go,
predictor.go, predictor_model.go, component.go) and checked strictly; the parts KServe inlines from
Kubernetes (the predictor's PodSpec, the model's Container) are checked against the client's models.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import invoke
from kube_models import check, json_fields

REPO = "s3://models/triton"

# --- KServe's InferenceService, v1beta1 -----------------------------------------------------------
ISVC_SPEC = {"predictor", "explainer", "transformer"}
# ComponentExtensionSpec, inlined in every component.
COMPONENT_EXTENSION: dict[str, str] = {
    "minReplicas": "int", "maxReplicas": "int", "scaleTarget": "int", "scaleMetric": "str",
    "containerConcurrency": "int", "timeout": "int", "canaryTrafficPercent": "int", "logger": "object",
    "batcher": "object", "labels": "dict[str, str]", "annotations": "dict[str, str]",
    "deploymentStrategy": "V1DeploymentStrategy",
}  # fmt: skip
SCALE_METRICS = {"cpu", "memory", "concurrency", "rps"}
# PredictorSpec: exactly one implementation, or containers in the inlined PodSpec.
IMPLEMENTATIONS = {"sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml", "lightgbm", "paddle", "model"}
PREDICTOR_OTHER: dict[str, str] = {"storageUris": "object", "workerSpec": "object"}
# PredictorExtensionSpec, inlined in ModelSpec and each framework spec, which also inlines a corev1.Container.
PREDICTOR_EXTENSION: dict[str, str] = {"storageUri": "str", "runtimeVersion": "str", "protocolVersion": "str", "storage": "object"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
MODEL_SPEC: dict[str, str] = {"modelFormat": "ModelFormat", "runtime": "str"}
MODEL_FORMAT = {"name": "str", "version": "str"}
# What KServe's storage initializer reads (inference_service_validation / utils: SupportedStorageURIPrefixList), or a local path.
STORAGE_PREFIXES = ("gs://", "s3://", "pvc://", "file://", "https://", "http://", "hdfs://", "webhdfs://", "oci://", "hf://")
ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # KServe's IsvcNameFmt


def check_isvc(doc: dict[str, Any]) -> None:
    """Fail on any field KServe's v1beta1 InferenceService does not define, or a value it refuses."""
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, set(doc)
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    check(doc["metadata"], "V1ObjectMeta", ".metadata")
    name = doc["metadata"]["name"]
    assert ISVC_NAME.fullmatch(name) and len(name) <= 63, name
    spec = doc["spec"]
    assert set(spec) <= ISVC_SPEC, f".spec: unknown keys {set(spec) - ISVC_SPEC}"
    predictor = spec["predictor"]
    pod_fields = json_fields("V1PodSpec")
    implementations = [key for key in predictor if key in IMPLEMENTATIONS]
    assert len(implementations) == 1, f".spec.predictor: exactly one implementation, got {implementations}"
    for key, value in predictor.items():
        path = f".spec.predictor.{key}"
        if key in IMPLEMENTATIONS:
            check_model(value, path, with_format=key == "model")
        elif key in COMPONENT_EXTENSION:
            check(value, COMPONENT_EXTENSION[key], path)
        elif key in PREDICTOR_OTHER:
            pass
        elif key in pod_fields:  # the inlined corev1.PodSpec
            check(value, pod_fields[key], path)
        else:
            raise AssertionError(f"{path}: the v1beta1 PredictorSpec has no field {key!r}")
    if "scaleMetric" in predictor:
        assert predictor["scaleMetric"] in SCALE_METRICS


def check_model(model: dict[str, Any], path: str, with_format: bool) -> None:
    container_fields = json_fields("V1Container")
    for key, value in model.items():
        where = f"{path}.{key}"
        if with_format and key == "modelFormat":
            assert set(value) <= set(MODEL_FORMAT) and isinstance(value.get("name"), str), f"{where}: {value}"
        elif with_format and key in MODEL_SPEC:
            check(value, MODEL_SPEC[key], where)
        elif key in PREDICTOR_EXTENSION:
            check(value, PREDICTOR_EXTENSION[key], where)
        elif key in container_fields:  # the inlined corev1.Container
            check(value, container_fields[key], where)
        else:
            raise AssertionError(f"{where}: KServe's ModelSpec has no field {key!r}")
    if with_format:
        assert "modelFormat" in model, f"{path}: modelFormat is required"
    if "protocolVersion" in model:
        assert model["protocolVersion"] in PROTOCOLS
    uri = model.get("storageUri")
    if uri is not None:
        assert uri.startswith(STORAGE_PREFIXES) or not re.match(r"\w+?://", uri), uri


def kserve(*args: str, name: str = "digits-cnn", repository: str = REPO):
    return invoke("deploy", "kserve", "--model-name", name, "--repository", repository, *args)


def load(text: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 1
    return docs[0]


# --- the tests ------------------------------------------------------------------------------------


def test_serves_the_triton_repository(workdir: Path) -> None:
    result = kserve()
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("# Generated by `champion deploy kserve`")
    doc = load(result.stdout)
    check_isvc(doc)
    model = doc["spec"]["predictor"]["model"]
    assert doc["metadata"]["name"] == "digits-cnn"
    assert model["modelFormat"] == {"name": "triton"}
    assert model["storageUri"] == REPO  # the repository root: Triton's --model-store, NAME/ inside it
    assert model["protocolVersion"] == "v2"
    assert model["args"] == ["--model-control-mode=explicit", "--load-model=digits-cnn"]
    assert model["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert "runtime" not in model  # KServe picks the runtime that serves the triton format


def test_options_land_where_kserve_reads_them(workdir: Path) -> None:
    result = kserve(
        "--model-name", "digits-cnn-onnx", "--name", "digits", "--namespace", "ml", "--runtime", "kserve-tritonserver",
        "--runtime-version", "24.08-py3", "--service-account", "s3-reader", "--cpu", "500m", "--memory", "1Gi",
        "--gpus", "1", "--min-replicas", "0", "--max-replicas", "3", repository="pvc://triton-claim/repo",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = load(result.stdout)
    check_isvc(doc)
    predictor = doc["spec"]["predictor"]
    model = predictor["model"]
    assert doc["metadata"]["name"] == "digits" and doc["metadata"]["namespace"] == "ml"
    assert model["args"][-1] == "--load-model=digits-cnn"  # NAME-onnx is served as NAME
    assert model["runtime"] == "kserve-tritonserver" and model["runtimeVersion"] == "24.08-py3"
    assert model["storageUri"] == "pvc://triton-claim/repo"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert model["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert predictor["serviceAccountName"] == "s3-reader"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 3)


@pytest.mark.parametrize("repository", ["gs://bucket/triton", "s3://b/p/q", "/mnt/models-repo"])
def test_storage_kserve_reads(workdir: Path, repository: str) -> None:
    result = kserve(repository=repository)
    assert result.exit_code == 0, result.stderr
    check_isvc(load(result.stdout))


def test_names_are_dns_labels_and_distinct(workdir: Path) -> None:
    """Model names Kubernetes would refuse become valid names; two models never share one."""
    from champion.deploy.manifests import derive_name

    models = ["my_model", "my-model", "My-Model", "3d-net", "a" * 80, "a" * 81, "x.y", "café", "digits-cnn"]
    names = []
    for model in models:
        result = kserve(name=model)
        assert result.exit_code == 0, (model, result.stderr)
        doc = load(result.stdout)
        check_isvc(doc)
        name = doc["metadata"]["name"]
        assert ISVC_NAME.fullmatch(name) and len(name) <= 45, name
        assert name == derive_name(model, max_length=45)
        names.append(name)
    assert len(set(names)) == len(names), names
    assert names[-1] == "digits-cnn"  # a valid name is kept as it is


def test_output_file_is_written_whole_and_only_over_our_own(workdir: Path) -> None:
    out = workdir / "isvc.yaml"
    printed = kserve()
    written = kserve("--output", str(out))
    assert written.exit_code == 0 and written.stdout == ""
    assert out.read_text() == printed.stdout
    again = kserve("--gpus", "1", "--output", str(out))  # our own file: replaced
    assert again.exit_code == 0 and "nvidia.com/gpu" in out.read_text()

    mine = workdir / "notes.yaml"
    mine.write_text("my notes\n")
    refused = kserve("--output", str(mine))
    assert refused.exit_code == 2 and "not written by champion" in refused.stderr
    assert mine.read_text() == "my notes\n"
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".tmp")] == []


@pytest.mark.parametrize(
    ("args", "repository", "message"),
    [
        ((), "./triton-models", "not visible to the cluster"),
        ((), "triton-models", "--repository"),
        ((), "http://host/triton", "--repository"),
        ((), "s3://", "s3://BUCKET/prefix"),
        ((), "s3://bucket/my models", "no spaces"),
        ((), "pvc://Bad_Claim/repo", "PersistentVolumeClaim"),
        (("--name", "digits_cnn"), REPO, "'_' and '.' are refused"),
        (("--name", "1digits"), REPO, "starting with a letter"),
        (("--name", "d" * 46), REPO, "at most 45"),
        (("--namespace", "ML"), REPO, "--namespace"),
        (("--cpu", "two"), REPO, "--cpu 'two': not a Kubernetes quantity"),
        (("--memory", "4 GB"), REPO, "--memory"),
        (("--gpus", "-1"), REPO, "--gpus -1"),
        (("--min-replicas", "3", "--max-replicas", "2"), REPO, "--max-replicas"),
        (("--runtime-version", "24.08 py3"), REPO, "--runtime-version"),
        (("--service-account", "S3_reader"), REPO, "--service-account"),
        (("--replicas", "2"), REPO, "No such option"),
    ],
)
def test_bad_input_is_exit_2_and_writes_nothing(workdir: Path, args: tuple[str, ...], repository: str, message: str) -> None:
    out = workdir / "isvc.yaml"
    result = kserve(*args, "--output", str(out), repository=repository)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr, result.stderr
    assert list(workdir.iterdir()) == []  # no manifest, and no temporary file beside it


def test_the_schema_check_refuses_what_kserve_does_not_define(workdir: Path) -> None:
    """The check above can fail: a misspelt or invented field anywhere is caught, with its path."""
    doc = load(kserve().stdout)
    bad = [
        ("spec", "predictor", "model", "storageURI"),  # KServe's is storageUri
        ("spec", "predictor", "minReplica"),
        ("spec", "predictor", "model", "resources", "limit"),
        ("spec", "predictor", "model", "modelFormat", "kind"),
        ("spec", "canary"),
        ("metadata", "label"),
    ]
    for path in bad:
        broken = yaml.safe_load(yaml.safe_dump(doc))
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = "x"
        with pytest.raises(AssertionError):
            check_isvc(broken)
    two = yaml.safe_load(yaml.safe_dump(doc))
    two["spec"]["predictor"]["triton"] = {"storageUri": REPO}
    with pytest.raises(AssertionError, match="exactly one implementation"):
        check_isvc(two)
