"""A Kubernetes Job (batch/v1) that runs `champion run` or `champion train` in champion's image.

    champion deploy training-job --config configs/mnist.yaml \\
        --tracking-uri http://mlflow.mlflow.svc:5000 --mlflow-secret mlflow-credentials > job.yaml
    kubectl apply -f job.yaml

The config file travels in a ConfigMap beside the Job (mounted read-only at /etc/champion), so the
pod trains exactly the file that was checked here; `--set` overrides are passed on as arguments.
MLflow credentials are never written into the manifest: the pod reads them from a Secret by
reference (`valueFrom.secretKeyRef`), as Kubernetes' basic-auth Secrets hold them (`username`,
`password`). Only the tracking URI is a plain value.

The pod runs in workflow mode (CHAMPION_WORKFLOW_MODE=1, see champion.workflow.mode): a gate's
rejection is an answer, so the Job completes (RESULT=failed in its log), and a failure that retrying
may cure (a server not reached) exits 75. Only those are retried (`--retries`), each retry resuming
or closing the training run of the try before it (the step id is the Job's uid); any other failure
fails the Job at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from champion.config import load_config
from champion.deploy import manifests
from champion.errors import EXIT_TRANSIENT, ConfigError
from champion.workflow import argo, mode
from champion import names

STEPS = ("run", "train")
CONFIG_DIR = "/etc/champion"
CONFIG_KEY = names.CONFIG_FILE
CONTAINER = "champion"
# The label the Job controller puts on its pods: the Job's uid, the same in every retry of its pod,
# different for the next Job of the same name. It names the workflow step the training run belongs to.
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
# Kubernetes gives containers a 64 MiB /dev/shm; PyTorch's DataLoader workers and DDP pass tensors
# through shared memory, so the Job mounts a memory-backed volume there instead.
SHM_VOLUME = "dshm"


def default_image() -> str:
    """The image `docker build -t champion:<version> .` makes: the one the Argo workflow runs too."""
    return argo.DEFAULT_IMAGE


def _check_tracking_uri(uri: str) -> str:
    # A pod's own disk is gone when the pod is: a SQLite or file store there would lose every run.
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if not scheme or scheme.group(1).lower() in ("file", "sqlite") or any(c.isspace() for c in uri):
        raise ConfigError(
            f"--tracking-uri {uri!r}: give the MLflow tracking server the pod can reach, "
            "e.g. http://mlflow.mlflow.svc.cluster.local:5000 (a file or SQLite store would be on the pod's own disk, lost with it)"
        )
    if manifests.has_credentials(uri):
        raise ConfigError(
            "--tracking-uri holds credentials (user:password@), which would be written in clear into the Job: give the URI "
            "without them and put username and password in a Secret named by --mlflow-secret (docs/deploy.md)"
        )
    return uri


def _check_endpoint(url: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise ConfigError(f"--s3-endpoint {url!r}: expected an http(s) URL, e.g. http://minio.minio.svc:9000")
    return url


def _gpu_overrides(gpus: int) -> list[str]:
    """With --gpus K the pod gets K GPUs and training uses them (a later --set may still say otherwise)."""
    return ["training.accelerator=gpu", f"training.devices={gpus}"] if gpus else []


def _check_devices(cfg: Any, gpus: int) -> None:
    """The config trains on what the pod will have: no GPU training without GPUs, no more devices than requested."""
    training = cfg.training
    on_gpu = training.accelerator in ("gpu", "cuda")
    if on_gpu and not gpus:
        raise ConfigError(f"training.accelerator is {training.accelerator} but the Job requests no GPU: add --gpus K")
    if on_gpu and isinstance(training.devices, int) and training.devices > gpus:
        raise ConfigError(f"training.devices={training.devices} but --gpus {gpus}: request as many GPUs as training uses")
    if training.num_nodes > 1:
        raise ConfigError(
            f"training.num_nodes={training.num_nodes}: this command writes a one-pod Job; several nodes need one pod "
            "per node (see docs/training.md for the torchrun environment variables each one sets)"
        )


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _environment(tracking_uri: str, mlflow_secret: str | None, s3_secret: str | None, s3_endpoint: str | None) -> list[dict[str, Any]]:
    """The pod's variables: the tracking URI and workflow mode as values, every credential by reference."""
    env: list[dict[str, Any]] = [
        {"name": "MLFLOW_TRACKING_URI", "value": _check_tracking_uri(tracking_uri)},
        {"name": mode.MODE_ENV, "value": "1"},
        {"name": mode.STEP_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_UID_LABEL}']"}}},
    ]
    if mlflow_secret is not None:
        manifests.check_subdomain(mlflow_secret, "--mlflow-secret")
        env += [
            _secret_env("MLFLOW_TRACKING_USERNAME", mlflow_secret, "username"),
            _secret_env("MLFLOW_TRACKING_PASSWORD", mlflow_secret, "password"),
        ]
    if s3_secret is not None:
        manifests.check_subdomain(s3_secret, "--s3-secret")
        env += [_secret_env(key, s3_secret, key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    if s3_endpoint is not None:
        env.append({"name": "AWS_ENDPOINT_URL", "value": _check_endpoint(s3_endpoint)})
    return env


def _failure_policy() -> dict[str, Any]:
    """Retry exactly the transient failures (exit 75, up to backoffLimit); fail the Job on any other at once."""

    def exit_codes(operator: str) -> dict[str, Any]:
        return {"containerName": CONTAINER, "operator": operator, "values": [EXIT_TRANSIENT]}

    return {"rules": [{"action": "Count", "onExitCodes": exit_codes("In")}, {"action": "FailJob", "onExitCodes": exit_codes("NotIn")}]}


def _metadata(model_name: str, name: str | None, namespace: str | None) -> dict[str, Any]:
    """The Job's name (--name, or train-<model.name>), namespace and labels; its ConfigMap and pods share them."""
    job_name = manifests.check_name(name, "--name") if name is not None else manifests.derive_name(model_name, prefix="train-")
    metadata: dict[str, Any] = {"name": job_name}
    if namespace is not None:
        metadata["namespace"] = manifests.check_name(namespace, "--namespace")
    metadata["labels"] = {"app.kubernetes.io/name": "champion", "app.kubernetes.io/component": "training", "app.kubernetes.io/instance": job_name}
    return metadata


def _config_map(metadata: dict[str, Any], config: Path) -> dict[str, Any]:
    """The ConfigMap `<job>-config` holding the config file as it was checked here."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**metadata, "name": f"{metadata['name']}-config"},
        "data": {CONFIG_KEY: Path(config).read_text()},
    }


def _volumes(config_map: dict[str, Any] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the container's mounts: a memory-backed /dev/shm, and the ConfigMap when there is one."""
    volumes: list[dict[str, Any]] = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}]
    mounts: list[dict[str, Any]] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    if config_map is not None:
        volumes.append({"name": "config", "configMap": {"name": config_map["metadata"]["name"]}})
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    return volumes, mounts


def _args(step: str, with_config: bool, sets: list[str]) -> list[str]:
    """`champion STEP [--config FILE] [--set K=V ...]`: the mounted config file, then the overrides."""
    args = [step]
    if with_config:
        args += ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"]
    for text in sets:
        args += ["--set", text]
    return args


def _job(metadata: dict[str, Any], container: dict[str, Any], volumes: list[dict[str, Any]], retries: int) -> dict[str, Any]:
    """The Job running `container` in one pod at a time, replaced after a transient failure up to `retries` times."""
    pod = {
        "metadata": {"labels": metadata["labels"]},
        "spec": {
            "restartPolicy": "Never",  # a failed pod is replaced by the Job (up to --retries), never restarted in place
            "securityContext": {"runAsNonRoot": True},  # the image runs as uid 10001
            "containers": [container],
            "volumes": volumes,
        },
    }
    spec = {
        "backoffLimit": manifests.check_count(retries, "--retries"),
        "podFailurePolicy": _failure_policy(),
        "template": pod,
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def training_job(
    *,
    step: str = "run",
    image: str | None = None,
    config: Path | None = None,
    overrides: list[str] | None = None,
    tracking_uri: str,
    mlflow_secret: str | None = None,
    s3_secret: str | None = None,
    s3_endpoint: str | None = None,
    name: str | None = None,
    namespace: str | None = None,
    cpu: str = "2",
    memory: str = "4Gi",
    gpus: int = 0,
    retries: int = 2,
) -> list[dict[str, Any]]:
    """The Job (and the ConfigMap holding `config`, when one is given) that trains in the cluster.

    Args:
        step: `run` (train, gate, export, validate, card) or `train` (train only; prints RUN_ID).
        image: champion's image (default: `champion:<version>`, as built from the Dockerfile).
        config: A local YAML config; it is validated here and shipped in a ConfigMap.
        overrides: `--set dotted.key=value` overrides, validated here, passed to the pod as arguments.
        tracking_uri: The MLflow tracking server (MLFLOW_TRACKING_URI in the pod).
        mlflow_secret: Secret with `username` and `password` (MLFLOW_TRACKING_USERNAME/PASSWORD).
        s3_secret: Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, for s3:// data.
        s3_endpoint: AWS_ENDPOINT_URL in the pod (MinIO and other S3-compatible stores).
        name: The Job's name (default: `train-<model.name>`, a DNS-1123 label).
        namespace: Its namespace (default: kubectl's current one).
        cpu: CPU requested.
        memory: Memory requested and limited.
        gpus: `nvidia.com/gpu` requested; training then runs on them (accelerator gpu, devices K).
        retries: The Job's backoffLimit: new pods after a transient failure (exit 75), never after another.

    Raises:
        ConfigError: an unknown config key or bad value, or anything Kubernetes would refuse.
    """
    if step not in STEPS:
        raise ConfigError(f"--step {step!r}: expected one of {', '.join(STEPS)}")
    image = manifests.check_image(image if image is not None else default_image())
    sets = _gpu_overrides(manifests.check_count(gpus, "--gpus")) + list(overrides or [])
    # Unknown keys and bad values end here, before anything is written. This machine's CHAMPION_*
    # variables are not read (env=None): the pod resolves its own environment when it loads the config.
    cfg = load_config(config, sets)
    _check_devices(cfg, gpus)
    metadata = _metadata(cfg.model.name, name, namespace)
    config_map = _config_map(metadata, config) if config is not None else None
    volumes, mounts = _volumes(config_map)
    container = {
        "name": CONTAINER,
        "image": image,
        "args": _args(step, config is not None, sets),
        "env": _environment(tracking_uri, mlflow_secret, s3_secret, s3_endpoint),
        "resources": manifests.resources(cpu, memory, gpus),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    job = _job(metadata, container, volumes, retries)
    return [job] if config_map is None else [config_map, job]
