"""A KServe InferenceService (serving.kserve.io/v1beta1) that serves the Triton repository `deploy triton` wrote.

    champion deploy triton --model-name digits-cnn --repository s3://models/triton
    champion deploy kserve --model-name digits-cnn --repository s3://models/triton > isvc.yaml
    kubectl apply -f isvc.yaml

The predictor is KServe's `model` form: `modelFormat.name: triton` (a Triton model repository, served
by a runtime that declares that format, such as KServe's `kserve-tritonserver`), `storageUri` the
repository root (KServe's storage initializer copies it to /mnt/models, Triton's --model-store), and
the Open Inference Protocol (`protocolVersion: v2`), the one `champion serve` speaks too.
Only model NAME is loaded (`--model-control-mode=explicit --load-model=NAME`, which KServe appends to
the runtime's own arguments), so one repository can hold several models, each with its own service.
"""

from __future__ import annotations

import re
from typing import Any

from champion.deploy import manifests
from champion.errors import ConfigError
from champion import names

API_VERSION = "serving.kserve.io/v1beta1"
MODEL_FORMAT = "triton"  # KServe's name for a Triton model repository (kserve-tritonserver declares it)
PROTOCOL = "v2"  # the Open Inference Protocol (KServe v2 REST and gRPC)
# KServe turns the name into DNS labels such as `<name>-predictor` (and Knative adds `-00001`); 45
# characters leaves room for those within the 63 a label may have.
MAX_NAME = 45
# The storage URIs KServe's storage initializer reads that a Triton repository from `deploy triton`
# can live on: object stores and a PersistentVolumeClaim (`pvc://CLAIM/path`). A local folder on this
# machine is not visible to the cluster.
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://")


def check_repository(repository: str) -> str:
    """The repository as KServe's `storageUri`: s3://, gs://, pvc:// or an absolute path inside the pod."""
    if repository.startswith(STORAGE_SCHEMES):
        scheme, rest = repository.split("://", 1)
        head = rest.split("/", 1)[0]
        if not head or any(c.isspace() for c in repository):
            raise ConfigError(f"--repository {repository!r}: expected {scheme}://BUCKET/prefix (no spaces)")
        if scheme == "pvc" and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", head):
            raise ConfigError(f"--repository {repository!r}: {head!r} is not a PersistentVolumeClaim name (pvc://CLAIM/path)")
        return repository
    if repository.startswith("/") and "://" not in repository and not any(c.isspace() for c in repository):
        return repository  # a path the storage initializer sees, such as a volume it mounts
    raise ConfigError(
        f"--repository {repository!r}: KServe needs the repository where the cluster can read it: "
        "s3://BUCKET/prefix, gs://BUCKET/prefix, pvc://CLAIM/path or an absolute path inside the pod. "
        "A local folder is not visible to the cluster: write the repository there with "
        "`champion deploy triton --repository s3://...` (or copy it onto a PersistentVolumeClaim) first"
    )


def inference_service(
    model_name: str,
    repository: str,
    *,
    name: str | None = None,
    namespace: str | None = None,
    runtime: str | None = None,
    runtime_version: str | None = None,
    service_account: str | None = None,
    cpu: str = "1",
    memory: str = "2Gi",
    gpus: int = 0,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
) -> dict[str, Any]:
    """The InferenceService serving model NAME from the Triton repository `repository`.

    Args:
        model_name: Registered model, NAME or NAME-onnx; Triton serves it as NAME.
        repository: The `--repository` given to `champion deploy triton` (its root, not DIR/NAME).
        name: The InferenceService's name (default: derived from NAME, a DNS-1123 label).
        namespace: Its namespace (default: kubectl's current one).
        runtime: ServingRuntime/ClusterServingRuntime to use (default: one KServe selects for `triton`).
        runtime_version: The runtime image's tag (Triton's release, e.g. 24.08-py3).
        service_account: The ServiceAccount whose Secret holds the storage credentials.
        cpu: CPU requested per replica.
        memory: Memory requested and limited per replica.
        gpus: `nvidia.com/gpu` per replica (pair with `deploy triton --kind gpu`).
        min_replicas: Fewest replicas (0 lets KServe scale to zero in serverless mode).
        max_replicas: Most replicas the autoscaler may run.

    Raises:
        ConfigError: any value KServe or Kubernetes would refuse.
    """

    served = model_name.removesuffix(names.ONNX_SUFFIX)
    if not served or any(c in served for c in "/:@ "):
        raise ConfigError(f"--model-name {model_name!r}: not a registered model name (no '/', ':', '@' or spaces)")
    storage_uri = check_repository(repository)
    metadata = _metadata(served, name, namespace)
    model = _model(served, storage_uri, runtime, runtime_version)
    model["resources"] = manifests.resources(cpu, memory, gpus)
    predictor = _predictor(model, min_replicas, max_replicas, service_account)
    return {"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": metadata, "spec": {"predictor": predictor}}


def _metadata(served: str, name: str | None, namespace: str | None) -> dict[str, Any]:
    """The service's name (--name, or derived from NAME, short enough for KServe's suffixes), namespace and labels."""
    isvc_name = (
        manifests.check_name(name, "--name", max_length=MAX_NAME, letter_first=True)
        if name is not None
        else manifests.derive_name(served, max_length=MAX_NAME)
    )
    metadata: dict[str, Any] = {"name": isvc_name}
    if namespace is not None:
        metadata["namespace"] = manifests.check_name(namespace, "--namespace")
    metadata["labels"] = {"app.kubernetes.io/name": "champion", "app.kubernetes.io/component": "serving"}
    return metadata


def _model(served: str, storage_uri: str, runtime: str | None, runtime_version: str | None) -> dict[str, Any]:
    """The predictor's `model` but its resources: a Triton repository at `storage_uri`, of which Triton loads `served` only."""
    model: dict[str, Any] = {"modelFormat": {"name": MODEL_FORMAT}}
    if runtime is not None:
        model["runtime"] = manifests.check_subdomain(runtime, "--runtime")
    model["protocolVersion"] = PROTOCOL
    model["storageUri"] = storage_uri
    if runtime_version is not None:
        if not re.fullmatch(r"[\w][\w.-]{0,127}", runtime_version):
            raise ConfigError(f"--runtime-version {runtime_version!r}: not an image tag, e.g. 24.08-py3")
        model["runtimeVersion"] = runtime_version
    # Appended by KServe to the runtime's `tritonserver --model-store=/mnt/models ...`: load NAME only.
    model["args"] = ["--model-control-mode=explicit", f"--load-model={served}"]
    return model


def _predictor(
    model: dict[str, Any], min_replicas: int | None, max_replicas: int | None, service_account: str | None
) -> dict[str, Any]:
    """The predictor: its replica bounds and ServiceAccount (each only when given), then `model`."""
    predictor: dict[str, Any] = {}
    if min_replicas is not None:
        predictor["minReplicas"] = manifests.check_count(min_replicas, "--min-replicas")
    if max_replicas is not None:
        manifests.check_count(max_replicas, "--max-replicas")
        if max_replicas == 0 or (min_replicas is not None and min_replicas > max_replicas):
            raise ConfigError(f"--max-replicas {max_replicas}: must be at least 1 and at least --min-replicas")
        predictor["maxReplicas"] = max_replicas
    if service_account is not None:
        predictor["serviceAccountName"] = manifests.check_subdomain(service_account, "--service-account")
    predictor["model"] = model
    return predictor
