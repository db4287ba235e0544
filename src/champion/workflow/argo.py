"""The Argo WorkflowTemplate that runs the step commands, one container each, built with hera.

    train ─→ promote ─┬─→ card
                      └─→ export ─→ validate ─→ deploy (Triton repository)
                                                        └─→ quantize ─→ deploy-int8   (with onnx_int8 in export.formats)

Each step is `champion <command> ... --output-files /champion/out` in the champion image, and
passes on only identifiers (run ids, version numbers, the result word) through output parameters
read from those files (`valueFrom.path`). Every step runs in workflow mode
(CHAMPION_WORKFLOW_MODE=1): a gate rejection exits 0 with RESULT=failed, so the `when` conditions
skip what follows and the workflow succeeds; any other failure fails the step and the workflow.
docs/workflow.md is the step contract.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import yaml

from champion.config import Config
from champion.deploy import manifests
from champion.errors import EXIT_TRANSIENT, ConfigError
from champion.registry.client import redact
from champion import names
from champion.workflow import mode, spec

if TYPE_CHECKING:  # hera takes most of a second to import: only `build` loads it
    from hera.workflows import Container, Parameter, Task, WorkflowTemplate
    from hera.workflows import models as m

# The image the Dockerfile builds (`docker build -t champion:<version> .`).
DEFAULT_IMAGE = f"champion:{version('champion')}"
DEFAULT_SECRET = "champion-mlflow"
DEFAULT_TRACKING_URI = "http://mlflow:5000"
DEFAULT_REPOSITORY = "s3://champion-models/triton"

ENTRYPOINT = "pipeline"
# A per-pod emptyDir: the step's output files and its config. The pod's own disk, lost with the pod,
# which is why nothing there is passed on except the identifiers read from it.
SCRATCH_VOLUME = "scratch"
SCRATCH = "/champion"
OUT = f"{SCRATCH}/out"
CONFIG_FILE = f"{SCRATCH}/config/config.yaml"
# Where the optional PersistentVolumeClaim (--models-volume) is mounted: the Triton repository and
# the training checkpoints (so that a retried train resumes) live there, outliving the pods.
MODELS_VOLUME = "models"
MODELS_MOUNT = "/models"
# The image's user and group (the Dockerfile's `USER 10001:10001`): pods mounting the volume get it
# as fsGroup, so that the non-root user can write checkpoints and the repository there.
IMAGE_GID = 10001

# The Secret's keys, each read by reference (secretKeyRef, optional): credentials never appear in
# the template. MLflow reads the first three, champion's API key header the fourth, S3 clients the rest.
SECRET_KEYS = (
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "CHAMPION_API_KEY",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
)  # fmt: skip

# Retried only when the command says the failure is transient (exit 75: a server not reached); a
# rejection exits 0 and bad data or a crash exits 1 or 2, which this expression never retries.
RETRY_EXPRESSION = f"asInt(lastRetry.exitCode) == {EXIT_TRANSIENT}"
RETRY_LIMIT = 3

# Names, images and quantities follow the Kubernetes rules in one place: champion.deploy.manifests.


@dataclass(frozen=True)
class Options:
    """What `champion workflow argo` takes besides the config."""

    image: str = DEFAULT_IMAGE
    name: str | None = None  # default: champion-<model.name>, made DNS-1123
    namespace: str | None = None
    gpus: int = 0
    cpu: str = "2"
    memory: str = "4Gi"
    secret: str = DEFAULT_SECRET
    tracking_uri: str = DEFAULT_TRACKING_URI
    triton_repository: str | None = None  # default: s3://…, or /models/triton with models_volume
    models_volume: str | None = None


def dns1123(text: str, limit: int = manifests.MAX_LABEL) -> str:
    """`text` as a DNS-1123 label, which Argo and Kubernetes require of names (`manifests.derive_name`):
    a short hash of the original is appended when anything had to change, so that two model names
    that differ only in `_` and `-` never share a mutex."""
    return manifests.derive_name(text, max_length=limit, letter_first=False)


def mutex_name(model_name: str) -> str:
    """The Argo mutex that serialises the alias moves (promote, validate) and deploys of one model."""
    return dns1123(f"champion-{model_name}")


def check_options(cfg: Config, opts: Options) -> tuple[str, str]:
    """Refuse options that would make a broken template; returns (template name, Triton repository).

    Raises:
        ConfigError: a bad image, name, namespace, resource, GPU count, tracking URI or repository.
    """
    if not manifests.IMAGE.fullmatch(opts.image):
        raise ConfigError(f"--image {opts.image!r} is not an image reference (e.g. {DEFAULT_IMAGE} or "
                          "registry.example.com/team/champion:0.1.0): no spaces or upper-case repository names")  # fmt: skip
    name = opts.name or dns1123(f"champion-{cfg.model.name}")
    for flag, value in (("--name", name), ("--namespace", opts.namespace), ("--secret", opts.secret), ("--models-volume", opts.models_volume)):
        if value is not None and not (manifests.DNS_LABEL.fullmatch(value) and len(value) <= manifests.MAX_LABEL):
            raise ConfigError(f"{flag} {value!r} is not a DNS-1123 name (at most 63 lower-case letters, digits and '-', "
                              "starting and ending with a letter or digit; Argo refuses '_')")  # fmt: skip
    if opts.gpus < 0:
        raise ConfigError(f"--gpus {opts.gpus}: must be 0 (CPU) or more")
    for flag, value in (("--cpu", opts.cpu), ("--memory", opts.memory)):
        if not manifests.QUANTITY.fullmatch(value):
            raise ConfigError(f"{flag} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
    if not re.fullmatch(r"https?://[^\s]+|databricks(://[^\s]*)?", opts.tracking_uri):
        raise ConfigError(f"--tracking-uri {opts.tracking_uri!r}: a workflow needs a tracking server every pod reaches "
                          "(http(s)://…); a sqlite: or file: store would be each pod's own disk, lost with it")  # fmt: skip
    if manifests.has_credentials(opts.tracking_uri):
        raise ConfigError(f"--tracking-uri holds credentials (user:password@), which would be written in clear into the template: "
                          f"give the URI without them ({redact(opts.tracking_uri).replace('***@', '')}) and put "
                          f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the Secret --secret {opts.secret} (docs/workflow.md)")  # fmt: skip
    repository = opts.triton_repository or (f"{MODELS_MOUNT}/triton" if opts.models_volume else DEFAULT_REPOSITORY)
    durable = repository.startswith("s3://") or (opts.models_volume is not None and repository.startswith(f"{MODELS_MOUNT}/"))
    if not durable or re.search(r"\s", repository):
        raise ConfigError(f"--triton-repository {repository!r} must outlive the pod: an s3://bucket/prefix, or a path "
                          f"under {MODELS_MOUNT}/ with --models-volume CLAIM (a PersistentVolumeClaim mounted there)")  # fmt: skip
    return name, repository


@dataclass(frozen=True)
class _Pod:
    """What the step containers share: the image, the environment, the scratch mount, the retry
    strategy, the model's mutex and, with --models-volume, the volume's mount and fsGroup."""

    image: str
    env: list[m.EnvVar]
    scratch: m.VolumeMount
    retry: m.RetryStrategy
    lock: m.Synchronization
    models: list[m.VolumeMount]  # empty without --models-volume
    writable: dict[str, m.PodSecurityContext]  # the fsGroup that lets the image's user write there

    def step(self, name: str, args: list[str], inputs: list[str], outs: list[Parameter], *, quiet: bool = True,
             mounts: list[m.VolumeMount] | None = None, **extra: Any) -> Container:  # fmt: skip
        """A step template: `champion ARGS --output-files OUT [--quiet]`, taking the input parameters named."""
        from hera.workflows import Container, Parameter

        return Container(
            name=name, image=self.image, command=["champion"], args=[*args, "--output-files", OUT, *(["--quiet"] if quiet else [])],
            inputs=[Parameter(name=p) for p in inputs], outputs=outs, env=self.env, volume_mounts=[self.scratch, *(mounts or [])],
            retry_strategy=self.retry, **extra,
        )  # fmt: skip


def _retry() -> m.RetryStrategy:
    from hera.workflows import models as m

    return m.RetryStrategy(
        limit=m.IntOrString(root=RETRY_LIMIT), retry_policy="OnFailure", expression=RETRY_EXPRESSION,
        backoff=m.Backoff(duration="30s", factor=m.IntOrString(root=2), max_duration="10m"),
    )  # fmt: skip


def _env(secret: str) -> list[m.EnvVar]:
    """Every step's variables: the tracking URI parameter, workflow mode, and the Secret's keys by reference."""
    from hera.workflows import models as m

    return [
        m.EnvVar(name="MLFLOW_TRACKING_URI", value="{{workflow.parameters.tracking-uri}}"),
        m.EnvVar(name=mode.MODE_ENV, value="1"),
        *(m.EnvVar(name=key, value_from=m.EnvVarSource(secret_key_ref=m.SecretKeySelector(name=secret, key=key, optional=True)))
          for key in SECRET_KEYS),
    ]  # fmt: skip


def _pod(opts: Options, model: str) -> _Pod:
    from hera.workflows import models as m

    volume = bool(opts.models_volume)
    return _Pod(
        image=opts.image, env=_env(opts.secret), scratch=m.VolumeMount(name=SCRATCH_VOLUME, mount_path=SCRATCH),
        retry=_retry(), lock=m.Synchronization(mutexes=[m.Mutex(name=mutex_name(model))]),
        models=[m.VolumeMount(name=MODELS_VOLUME, mount_path=MODELS_MOUNT)] if volume else [],
        writable={"pod_security_context": m.PodSecurityContext(fs_group=IMAGE_GID)} if volume else {},
    )  # fmt: skip


def _volumes(opts: Options) -> list[m.Volume]:
    """The scratch emptyDir, and with --models-volume the PersistentVolumeClaim."""
    from hera.workflows import models as m

    volumes = [m.Volume(name=SCRATCH_VOLUME, empty_dir=m.EmptyDirVolumeSource())]
    if opts.models_volume:
        claim = m.PersistentVolumeClaimVolumeSource(claim_name=opts.models_volume)
        volumes.append(m.Volume(name=MODELS_VOLUME, persistent_volume_claim=claim))
    return volumes


def _arguments(cfg: Config, opts: Options, repository: str) -> list[Parameter]:
    """The workflow parameters, which a submission may change: tracking URI, config and Triton repository."""
    from hera.workflows import Parameter

    return [
        Parameter(name="tracking-uri", value=opts.tracking_uri, description="MLflow tracking server every step talks to."),
        Parameter(name="config", value=cfg.to_yaml(), description="The champion config (YAML) the train step trains with."),
        Parameter(name="triton-repository", value=repository, description="Triton model repository: s3://bucket/prefix or a path on the models volume."),
    ]  # fmt: skip


def _outputs(**keys: str | tuple[str, str]) -> list[Parameter]:
    """Output parameters read from the --output-files folder; a (KEY, default) pair for a key the
    command leaves out in some outcome (MODEL_VERSION on a rejection)."""
    from hera.workflows import Parameter
    from hera.workflows import models as m

    params = []
    for pname, key in keys.items():
        key, default = key if isinstance(key, tuple) else (key, None)
        params.append(Parameter(name=pname.replace("_", "-"), value_from=m.ValueFrom(path=f"{OUT}/{key}", default=default)))
    return params


def _pinned(model: str, opts: Options) -> list[str]:
    """The train step's --set overrides, applied over the config parameter.

    The config parameter cannot move the model away from its export, deploy and mutex. --set reads
    YAML: a name YAML would read as something else (`1.0`, `yes`) is quoted.
    """
    pinned = [f"model.name={model if yaml.safe_load(model) == model else json.dumps(model)}"]
    if opts.models_volume:
        pinned.append(f"training.checkpoint.dirpath={MODELS_MOUNT}/checkpoints")  # a retried train resumes from here
    if opts.gpus:
        pinned += ["training.accelerator=gpu", f"training.devices={opts.gpus}"]
    return pinned


def _train_resources(opts: Options) -> m.ResourceRequirements:
    from hera.workflows import models as m

    limits = {"memory": opts.memory, **({"nvidia.com/gpu": str(opts.gpus)} if opts.gpus else {})}
    return m.ResourceRequirements(
        requests={"cpu": m.Quantity(root=opts.cpu), "memory": m.Quantity(root=opts.memory), **({"nvidia.com/gpu": m.Quantity(root=str(opts.gpus))} if opts.gpus else {})},
        limits={k: m.Quantity(root=v) for k, v in limits.items()},
    )  # fmt: skip


def _train(pod: _Pod, model: str, opts: Options) -> Container:
    """The train template: the config parameter as a file, the pinned overrides, the resources, and a
    step id that every retry shares (the workflow's uid)."""
    from hera.workflows import Container
    from hera.workflows import models as m

    sets = [a for p in _pinned(model, opts) for a in ("--set", p)]
    return Container(
        name="train", image=pod.image, command=["champion"], args=["train", "--config", CONFIG_FILE, *sets, "--output-files", OUT, "--quiet"],
        inputs=[m.Artifact(name="config", path=CONFIG_FILE, raw=m.RawArtifact(data="{{workflow.parameters.config}}"))],
        outputs=_outputs(run_id="RUN_ID"), env=[*pod.env, m.EnvVar(name=mode.STEP_ENV, value="{{workflow.uid}}-train")],
        volume_mounts=[pod.scratch, *pod.models], resources=_train_resources(opts), retry_strategy=pod.retry, **pod.writable,
    )  # fmt: skip


def _deploy(pod: _Pod, name: str, model_name: str) -> Container:
    """A `deploy triton` template for `model_name`, writing the repository parameter under the model's mutex."""
    args = ["deploy", "triton", "--model-name", model_name, "--version", "{{inputs.parameters.model-version}}",
            "--repository", "{{workflow.parameters.triton-repository}}"]  # fmt: skip
    outs = _outputs(triton_model_dir="TRITON_MODEL_DIR", triton_model_version="TRITON_MODEL_VERSION")
    return pod.step(name, args, ["model-version"], outs, synchronization=pod.lock, mounts=pod.models, **pod.writable)


def _steps(pod: _Pod, model: str) -> dict[str, Container]:
    """The templates after train, in this order: promote (Gate 1), card, export, validate (Gate 2), deploy."""
    run_id, export_run_id = "{{inputs.parameters.run-id}}", "{{inputs.parameters.export-run-id}}"
    return {
        "promote": pod.step("promote", ["promote", "--run-id", run_id], ["run-id"],
                            _outputs(result="RESULT", decided_by="DECIDED_BY", model_version=("MODEL_VERSION", "none")),
                            synchronization=pod.lock),
        # `card` shows no progress, so it takes no --quiet.
        "card": pod.step("card", ["card", "--run-id", run_id, "--output-dir", f"{SCRATCH}/cards"], ["run-id"],
                         _outputs(model_card="MODEL_CARD"), quiet=False),
        "export": pod.step("export", ["export", "--model-name", model, "--version", "{{inputs.parameters.model-version}}"], ["model-version"],
                           _outputs(export_run_id="EXPORT_RUN_ID", model_version="MODEL_VERSION")),
        "validate": pod.step("validate", ["validate", "--export-run-id", export_run_id], ["export-run-id"],
                             _outputs(result="RESULT", model_version=("MODEL_VERSION", "none")), synchronization=pod.lock),
        "deploy": _deploy(pod, "deploy", model),
    }  # fmt: skip


def _int8_steps(pod: _Pod, model: str) -> dict[str, Container]:
    """The int8 gate (quantize) and the deploy of the int8 model it registers."""
    return {
        "quantize": pod.step("quantize", ["quantize", "--export-run-id", "{{inputs.parameters.export-run-id}}"], ["export-run-id"],
                             _outputs(result="INT8_RESULT", model_version=("INT8_MODEL_VERSION", "none")), synchronization=pod.lock),
        "deploy-int8": _deploy(pod, "deploy-int8", names.int8_name(model)),
    }  # fmt: skip


def _dag(steps: dict[str, Container]) -> None:
    """The entrypoint DAG over `steps` (see the module docstring), inside the WorkflowTemplate being built."""
    from hera.workflows import DAG

    with DAG(name=ENTRYPOINT):
        passed = '"{{tasks.promote.outputs.parameters.result}}" == "passed"'
        t_train = steps["train"](name="train")
        t_promote = steps["promote"](name="promote", arguments={"run-id": "{{tasks.train.outputs.parameters.run-id}}"})
        t_card = steps["card"](name="card", arguments={"run-id": "{{tasks.train.outputs.parameters.run-id}}"})
        t_export = steps["export"](name="export", when=passed, arguments={"model-version": "{{tasks.promote.outputs.parameters.model-version}}"})
        # Quoted on purpose: when promote rejected, validate and deploy are skipped with export, and
        # a skipped task has no outputs; Argo leaves such a reference as it is, and the quoted
        # literal compares unequal (unquoted, the `{{` would be a syntax error in the condition).
        t_validate = steps["validate"](name="validate", when=passed,
                                       arguments={"export-run-id": "{{tasks.export.outputs.parameters.export-run-id}}"})  # fmt: skip
        validated = '"{{tasks.validate.outputs.parameters.result}}" == "passed"'
        t_deploy = steps["deploy"](name="deploy", when=validated, arguments={"model-version": "{{tasks.validate.outputs.parameters.model-version}}"})
        t_train >> t_promote >> [t_card, t_export]
        t_export >> t_validate >> t_deploy
        if "quantize" in steps:
            _int8_tasks(steps, t_deploy, validated)


def _int8_tasks(steps: dict[str, Container], deploy: Task, validated: str) -> None:
    """quantize and deploy-int8, after deploy: an int8 rejection skips deploy-int8 only, the float model ships either way."""
    t_quantize = steps["quantize"](name="quantize", when=validated,
                                   arguments={"export-run-id": "{{tasks.export.outputs.parameters.export-run-id}}"})  # fmt: skip
    t_deploy_int8 = steps["deploy-int8"](name="deploy-int8", when='"{{tasks.quantize.outputs.parameters.result}}" == "passed"',
                                         arguments={"model-version": "{{tasks.quantize.outputs.parameters.model-version}}"})  # fmt: skip
    # After deploy: the float model reaches Triton without waiting for the int8 gate (both hold the
    # model's mutex). A Skipped deploy still lets quantize's own `when` decide.
    deploy >> t_quantize >> t_deploy_int8


def build(cfg: Config, opts: Options) -> WorkflowTemplate:
    """The WorkflowTemplate (a hera object) for `cfg`'s model; `.to_yaml()` writes it.

    The model name is fixed here (the export, deploy and mutex need it); the config travels as the
    workflow parameter `config` (its YAML, written to a file for the train step), the tracking URI as
    `tracking-uri`, the Triton repository as `triton-repository`.

    Raises:
        ConfigError: see `check_options`.
    """
    from hera.workflows import WorkflowTemplate

    name, repository = check_options(cfg, opts)
    model = cfg.model.name
    pod = _pod(opts, model)
    with WorkflowTemplate(
        name=name, namespace=opts.namespace, entrypoint=ENTRYPOINT, volumes=_volumes(opts),
        labels={"app.kubernetes.io/name": "champion", "app.kubernetes.io/component": "pipeline"},
        annotations={"champion/model-name": model}, arguments=_arguments(cfg, opts, repository),
    ) as template:  # fmt: skip
        # Each template joins the WorkflowTemplate as it is made, so this is their order in the YAML.
        steps = {"train": _train(pod, model, opts), **_steps(pod, model)}
        if "onnx_int8" in cfg.export.formats:  # as `champion run`: the int8 gate after a Gate 2 pass
            steps.update(_int8_steps(pod, model))
        _dag(steps)
    return template


def render(cfg: Config, opts: Options) -> str:
    """The WorkflowTemplate as YAML, checked against Argo's schema and references first.

    Raises:
        ConfigError: see `check_options`.
        SpecError: the built document fails `champion.workflow.spec.check` (a bug, never the user's input).
    """
    doc = build(cfg, opts).to_dict()
    spec.check(doc)
    return yaml.safe_dump(doc, sort_keys=False, width=120)
