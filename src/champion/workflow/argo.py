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

import yaml

from champion.config import Config
from champion.errors import EXIT_TRANSIENT, ConfigError
from champion.workflow import mode
from champion import names

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

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# An image reference: [registry[:port]/]path[:tag][@digest], no spaces (docker's grammar, loosely).
_IMAGE = re.compile(r"[a-z0-9]+([._:/-][a-zA-Z0-9_.-]+)*(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


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


def dns1123(text: str, limit: int = 63) -> str:
    """`text` as a DNS-1123 label (lowercase letters, digits, '-'), which Argo and Kubernetes require of
    names; a short hash of the original is appended when anything had to change, so that two model
    names that differ only in `_` and `-` never share a mutex."""
    import hashlib

    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")
    if name == text and len(name) <= limit:
        return name
    suffix = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{suffix}" if name else suffix


def mutex_name(model_name: str) -> str:
    """The Argo mutex that serialises the alias moves (promote, validate) and deploys of one model."""
    return dns1123(f"champion-{model_name}")


def check_options(cfg: Config, opts: Options) -> tuple[str, str]:
    """Refuse options that would make a broken template; returns (template name, Triton repository).

    Raises:
        ConfigError: a bad image, name, namespace, resource, GPU count, tracking URI or repository.
    """
    if not _IMAGE.fullmatch(opts.image):
        raise ConfigError(f"--image {opts.image!r} is not an image reference (e.g. {DEFAULT_IMAGE} or "
                          "registry.example.com/team/champion:0.1.0): no spaces or upper-case repository names")  # fmt: skip
    name = opts.name or dns1123(f"champion-{cfg.model.name}")
    for flag, value in (("--name", name), ("--namespace", opts.namespace), ("--secret", opts.secret), ("--models-volume", opts.models_volume)):
        if value is not None and not (_DNS1123_LABEL.fullmatch(value) and len(value) <= 63):
            raise ConfigError(f"{flag} {value!r} is not a DNS-1123 name (at most 63 lower-case letters, digits and '-', "
                              "starting and ending with a letter or digit; Argo refuses '_')")  # fmt: skip
    if opts.gpus < 0:
        raise ConfigError(f"--gpus {opts.gpus}: must be 0 (CPU) or more")
    for flag, value in (("--cpu", opts.cpu), ("--memory", opts.memory)):
        if not _QUANTITY.fullmatch(value):
            raise ConfigError(f"{flag} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
    if not re.fullmatch(r"https?://[^\s]+|databricks(://[^\s]*)?", opts.tracking_uri):
        raise ConfigError(f"--tracking-uri {opts.tracking_uri!r}: a workflow needs a tracking server every pod reaches "
                          "(http(s)://…); a sqlite: or file: store would be each pod's own disk, lost with it")  # fmt: skip
    repository = opts.triton_repository or (f"{MODELS_MOUNT}/triton" if opts.models_volume else DEFAULT_REPOSITORY)
    durable = repository.startswith("s3://") or (opts.models_volume is not None and repository.startswith(f"{MODELS_MOUNT}/"))
    if not durable or re.search(r"\s", repository):
        raise ConfigError(f"--triton-repository {repository!r} must outlive the pod: an s3://bucket/prefix, or a path "
                          f"under {MODELS_MOUNT}/ with --models-volume CLAIM (a PersistentVolumeClaim mounted there)")  # fmt: skip
    return name, repository


def build(cfg: Config, opts: Options):
    """The WorkflowTemplate (a hera object) for `cfg`'s model; `.to_yaml()` writes it.

    The model name is fixed here (the export, deploy and mutex need it); the config travels as the
    workflow parameter `config` (its YAML, written to a file for the train step), the tracking URI as
    `tracking-uri`, the Triton repository as `triton-repository`.

    Raises:
        ConfigError: see `check_options`.
    """
    from hera.workflows import DAG, Container, Parameter, WorkflowTemplate
    from hera.workflows import models as m

    name, repository = check_options(cfg, opts)
    model = cfg.model.name
    lock = m.Synchronization(mutexes=[m.Mutex(name=mutex_name(model))])
    retry = m.RetryStrategy(
        limit=m.IntOrString(root=RETRY_LIMIT), retry_policy="OnFailure", expression=RETRY_EXPRESSION,
        backoff=m.Backoff(duration="30s", factor=m.IntOrString(root=2), max_duration="10m"),
    )  # fmt: skip
    env = [
        m.EnvVar(name="MLFLOW_TRACKING_URI", value="{{workflow.parameters.tracking-uri}}"),
        m.EnvVar(name=mode.MODE_ENV, value="1"),
        *(m.EnvVar(name=key, value_from=m.EnvVarSource(secret_key_ref=m.SecretKeySelector(name=opts.secret, key=key, optional=True)))
          for key in SECRET_KEYS),
    ]  # fmt: skip
    scratch = m.VolumeMount(name=SCRATCH_VOLUME, mount_path=SCRATCH)
    models = [m.VolumeMount(name=MODELS_VOLUME, mount_path=MODELS_MOUNT)] if opts.models_volume else []
    writable = {"pod_security_context": m.PodSecurityContext(fs_group=IMAGE_GID)} if opts.models_volume else {}
    volumes = [m.Volume(name=SCRATCH_VOLUME, empty_dir=m.EmptyDirVolumeSource())]
    if opts.models_volume:
        volumes.append(m.Volume(name=MODELS_VOLUME, persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(claim_name=opts.models_volume)))

    def outputs(**keys: str | tuple[str, str]) -> list:
        """Output parameters read from the --output-files folder; a (KEY, default) pair for a key the
        command leaves out in some outcome (MODEL_VERSION on a rejection)."""
        params = []
        for pname, key in keys.items():
            key, default = key if isinstance(key, tuple) else (key, None)
            params.append(Parameter(name=pname.replace("_", "-"), value_from=m.ValueFrom(path=f"{OUT}/{key}", default=default)))
        return params

    def step(step_name: str, args: list[str], inputs: list[str], outs: list, quiet: bool = True, **extra) -> Container:
        return Container(
            name=step_name, image=opts.image, command=["champion"], args=[*args, "--output-files", OUT, *(["--quiet"] if quiet else [])],
            inputs=[Parameter(name=p) for p in inputs], outputs=outs, env=env, volume_mounts=[scratch, *extra.pop("mounts", [])],
            retry_strategy=retry, **extra,
        )  # fmt: skip

    # The config parameter cannot move the model away from its export, deploy and mutex. --set reads
    # YAML: a name YAML would read as something else (`1.0`, `yes`) is quoted.
    pinned = [f"model.name={model if yaml.safe_load(model) == model else json.dumps(model)}"]
    if opts.models_volume:
        pinned.append(f"training.checkpoint.dirpath={MODELS_MOUNT}/checkpoints")  # a retried train resumes from here
    if opts.gpus:
        pinned += ["training.accelerator=gpu", f"training.devices={opts.gpus}"]
    limits = {"memory": opts.memory, **({"nvidia.com/gpu": str(opts.gpus)} if opts.gpus else {})}
    resources = m.ResourceRequirements(
        requests={"cpu": m.Quantity(root=opts.cpu), "memory": m.Quantity(root=opts.memory), **({"nvidia.com/gpu": m.Quantity(root=str(opts.gpus))} if opts.gpus else {})},
        limits={k: m.Quantity(root=v) for k, v in limits.items()},
    )  # fmt: skip
    train_env = [*env, m.EnvVar(name=mode.STEP_ENV, value="{{workflow.uid}}-train")]
    model_arg = ["--model-name", model]

    with WorkflowTemplate(
        name=name, namespace=opts.namespace, entrypoint=ENTRYPOINT, volumes=volumes,
        labels={"app.kubernetes.io/name": "champion", "app.kubernetes.io/component": "pipeline"},
        annotations={"champion/model-name": model},
        arguments=[
            Parameter(name="tracking-uri", value=opts.tracking_uri, description="MLflow tracking server every step talks to."),
            Parameter(name="config", value=cfg.to_yaml(), description="The champion config (YAML) the train step trains with."),
            Parameter(name="triton-repository", value=repository, description="Triton model repository: s3://bucket/prefix or a path on the models volume."),
        ],
    ) as template:  # fmt: skip
        train = Container(
            name="train", image=opts.image, command=["champion"],
            args=["train", "--config", CONFIG_FILE, *(a for p in pinned for a in ("--set", p)), "--output-files", OUT, "--quiet"],
            inputs=[m.Artifact(name="config", path=CONFIG_FILE, raw=m.RawArtifact(data="{{workflow.parameters.config}}"))],
            outputs=outputs(run_id="RUN_ID"), env=train_env, volume_mounts=[scratch, *models], resources=resources,
            retry_strategy=retry, **writable,
        )  # fmt: skip
        promote = step("promote", ["promote", "--run-id", "{{inputs.parameters.run-id}}"], ["run-id"],
                       outputs(result="RESULT", decided_by="DECIDED_BY", model_version=("MODEL_VERSION", "none")),
                       synchronization=lock)  # fmt: skip
        # `card` shows no progress, so it takes no --quiet.
        card = step("card", ["card", "--run-id", "{{inputs.parameters.run-id}}", "--output-dir", f"{SCRATCH}/cards"], ["run-id"],
                    outputs(model_card="MODEL_CARD"), quiet=False)  # fmt: skip
        export = step("export", ["export", *model_arg, "--version", "{{inputs.parameters.model-version}}"], ["model-version"],
                      outputs(export_run_id="EXPORT_RUN_ID", model_version="MODEL_VERSION"))  # fmt: skip
        validate = step("validate", ["validate", "--export-run-id", "{{inputs.parameters.export-run-id}}"], ["export-run-id"],
                        outputs(result="RESULT", model_version=("MODEL_VERSION", "none")), synchronization=lock)  # fmt: skip
        deploy = step("deploy", ["deploy", "triton", *model_arg, "--version", "{{inputs.parameters.model-version}}",
                                 "--repository", "{{workflow.parameters.triton-repository}}"], ["model-version"],
                      outputs(triton_model_dir="TRITON_MODEL_DIR", triton_model_version="TRITON_MODEL_VERSION"),
                      synchronization=lock, mounts=models, **writable)  # fmt: skip

        int8 = "onnx_int8" in cfg.export.formats  # as `champion run`: the int8 gate after a Gate 2 pass
        if int8:

            quantize = step("quantize", ["quantize", "--export-run-id", "{{inputs.parameters.export-run-id}}"], ["export-run-id"],
                            outputs(result="INT8_RESULT", model_version=("INT8_MODEL_VERSION", "none")), synchronization=lock)  # fmt: skip
            deploy_int8 = step("deploy-int8", ["deploy", "triton", "--model-name", names.int8_name(model), "--version", "{{inputs.parameters.model-version}}",
                                               "--repository", "{{workflow.parameters.triton-repository}}"], ["model-version"],
                               outputs(triton_model_dir="TRITON_MODEL_DIR", triton_model_version="TRITON_MODEL_VERSION"),
                               synchronization=lock, mounts=models, **writable)  # fmt: skip

        with DAG(name=ENTRYPOINT):
            passed = '"{{tasks.promote.outputs.parameters.result}}" == "passed"'
            t_train = train(name="train")
            t_promote = promote(name="promote", arguments={"run-id": "{{tasks.train.outputs.parameters.run-id}}"})
            t_card = card(name="card", arguments={"run-id": "{{tasks.train.outputs.parameters.run-id}}"})
            t_export = export(name="export", when=passed, arguments={"model-version": "{{tasks.promote.outputs.parameters.model-version}}"})
            # Quoted on purpose: when promote rejected, validate and deploy are skipped with export, and
            # a skipped task has no outputs; Argo leaves such a reference as it is, and the quoted
            # literal compares unequal (unquoted, the `{{` would be a syntax error in the condition).
            t_validate = validate(name="validate", when=passed,
                                  arguments={"export-run-id": "{{tasks.export.outputs.parameters.export-run-id}}"})  # fmt: skip
            validated = '"{{tasks.validate.outputs.parameters.result}}" == "passed"'
            t_deploy = deploy(name="deploy", when=validated, arguments={"model-version": "{{tasks.validate.outputs.parameters.model-version}}"})
            t_train >> t_promote >> [t_card, t_export]
            t_export >> t_validate >> t_deploy
            if int8:  # an int8 rejection skips deploy-int8 only: the float model ships either way
                t_quantize = quantize(name="quantize", when=validated,
                                      arguments={"export-run-id": "{{tasks.export.outputs.parameters.export-run-id}}"})  # fmt: skip
                t_deploy_int8 = deploy_int8(name="deploy-int8", when='"{{tasks.quantize.outputs.parameters.result}}" == "passed"',
                                            arguments={"model-version": "{{tasks.quantize.outputs.parameters.model-version}}"})  # fmt: skip
                # After deploy: the float model reaches Triton without waiting for the int8 gate (both hold
                # the model's mutex). A Skipped deploy still lets quantize's own `when` decide.
                t_deploy >> t_quantize >> t_deploy_int8
    return template


def render(cfg: Config, opts: Options) -> str:
    """The WorkflowTemplate as YAML, checked against Argo's schema and references first.

    Raises:
        ConfigError: see `check_options`.
        SpecError: the built document fails `champion.workflow.spec.check` (a bug, never the user's input).
    """
    from champion.workflow import spec

    doc = build(cfg, opts).to_dict()
    spec.check(doc)
    return yaml.safe_dump(doc, sort_keys=False, width=120)
