"""`champion deploy` (Triton repository, KServe InferenceService, training Job) and `champion serve`.

Option defaults are read from the library function or dataclass that applies them, so the --help
shown here and the library's behaviour cannot drift apart. serve's --host and --port are the one
exception: champion.deploy.serve is too heavy to import for --help, so its signature is not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from champion import names
from champion.cli.common import ConfigOpt, OutputFilesOpt, QuietOpt, SetOpt, _emit, app, defaults, guarded
from champion.deploy import kserve, manifests, triton
from champion.deploy.limits import Limits
from champion.workflow import training_job

TRITON = defaults(triton.deploy)
KSERVE = defaults(kserve.inference_service)
JOB = defaults(training_job.training_job)
# Read from champion.deploy.limits, not champion.deploy.serve: the server's module imports MLflow,
# numpy and Starlette, which `champion --help` must not pay for.
LIMITS = Limits()

deploy_app = typer.Typer(help="Deployment artefacts for the validated ONNX model (<name>-onnx @deploy).", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

ManifestOutputOpt = typer.Option(None, "--output", "-o", help="Write the YAML to FILE (atomically) instead of stdout.")


@deploy_app.command("triton")
@guarded
def deploy_triton(
    model_name: str = typer.Option(..., "--model-name", help="Registered model, NAME or NAME-onnx; Triton serves it as NAME."),
    repository: str = typer.Option(..., "--repository", help="Triton model repository: a local folder or s3://bucket/prefix."),
    alias: str = typer.Option(TRITON["alias"], "--alias", help="Alias of NAME-onnx to deploy."),
    version: Optional[str] = typer.Option(None, "--version", help="Version of NAME-onnx to deploy (instead of --alias); a lower one rolls back."),
    kind: str = typer.Option(TRITON["kind"], "--kind", help="cpu or gpu: the instance_group kind (KIND_CPU, KIND_GPU)."),
    instances: int = typer.Option(TRITON["instances"], "--instances", help="Model instances Triton runs (instance_group count)."),
    keep: Optional[int] = typer.Option(None, "--keep", help="Keep N version folders this command wrote (the deployed one first), delete the rest."),
    output_files: Optional[Path] = OutputFilesOpt,
    quiet: bool = QuietOpt,
) -> int:
    """Write NAME-onnx into a Triton model repository as DIR/NAME (config.pbtxt, labels.txt, VERSION/model.onnx).

    Prints TRITON_MODEL_DIR and TRITON_MODEL_VERSION. Serve with `tritonserver --model-repository=DIR`.
    """
    result = triton.deploy(model_name, repository, alias=alias, version=version, kind=kind, instances=instances, keep=keep, quiet=quiet)
    _emit({"TRITON_MODEL_DIR": result.model_dir, "TRITON_MODEL_VERSION": result.version}, output_files)
    return 0


@deploy_app.command("kserve")
@guarded
def deploy_kserve(
    model_name: str = typer.Option(..., "--model-name", help="Registered model, NAME or NAME-onnx; served as NAME."),
    repository: str = typer.Option(
        ..., "--repository", help="The Triton repository deploy triton wrote: s3://BUCKET/prefix, gs://..., pvc://CLAIM/path or an absolute path in the pod."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="InferenceService name (default: from NAME, a DNS-1123 label)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Namespace (default: kubectl's current one)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="ServingRuntime to use (default: the one KServe selects for the triton format)."),
    runtime_version: Optional[str] = typer.Option(None, "--runtime-version", help="Triton image tag, e.g. 24.08-py3 (default: the runtime's)."),
    service_account: Optional[str] = typer.Option(None, "--service-account", help="ServiceAccount whose Secret holds the S3/GCS credentials."),
    cpu: str = typer.Option(KSERVE["cpu"], "--cpu", help="CPU requested per replica."),
    memory: str = typer.Option(KSERVE["memory"], "--memory", help="Memory requested and limited per replica."),
    gpus: int = typer.Option(KSERVE["gpus"], "--gpus", help="nvidia.com/gpu per replica (with deploy triton --kind gpu)."),
    min_replicas: Optional[int] = typer.Option(None, "--min-replicas", help="Fewest replicas (0: scale to zero, serverless mode)."),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", help="Most replicas."),
    output: Optional[Path] = ManifestOutputOpt,
) -> int:
    """Print a KServe InferenceService (v1beta1) serving NAME from the Triton repository deploy triton wrote."""
    isvc = kserve.inference_service(
        model_name, repository, name=name, namespace=namespace, runtime=runtime, runtime_version=runtime_version,
        service_account=service_account, cpu=cpu, memory=memory, gpus=gpus, min_replicas=min_replicas, max_replicas=max_replicas,
    )  # fmt: skip
    manifests.write(manifests.to_yaml([isvc], "deploy kserve"), output)
    return 0


@deploy_app.command("training-job")
@guarded
def deploy_training_job(
    tracking_uri: str = typer.Option(..., "--tracking-uri", help="MLflow tracking server the pod reaches (MLFLOW_TRACKING_URI)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    step: str = typer.Option(JOB["step"], "--step", help="run (every step) or train (train only)."),
    image: Optional[str] = typer.Option(None, "--image", help="champion's image (default: champion:<version>, from the Dockerfile)."),
    mlflow_secret: Optional[str] = typer.Option(None, "--mlflow-secret", help="Secret with username and password for MLflow (read by reference)."),
    s3_secret: Optional[str] = typer.Option(None, "--s3-secret", help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (s3:// data)."),
    s3_endpoint: Optional[str] = typer.Option(None, "--s3-endpoint", help="AWS_ENDPOINT_URL in the pod (MinIO, ...)."),
    name: Optional[str] = typer.Option(None, "--name", help="Job name (default: train-<model.name>, a DNS-1123 label)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Namespace (default: kubectl's current one)."),
    cpu: str = typer.Option(JOB["cpu"], "--cpu", help="CPU requested."),
    memory: str = typer.Option(JOB["memory"], "--memory", help="Memory requested and limited."),
    gpus: int = typer.Option(JOB["gpus"], "--gpus", help="nvidia.com/gpu requested; training runs on them."),
    retries: int = typer.Option(JOB["retries"], "--retries", help="Pods retried after a transient failure (a server not reached), never after another."),
    output: Optional[Path] = ManifestOutputOpt,
) -> int:
    """Print a Kubernetes Job (and a ConfigMap with --config) running champion run or train in champion's image."""
    docs = training_job.training_job(
        step=step, image=image, config=config, overrides=set_, tracking_uri=tracking_uri, mlflow_secret=mlflow_secret,
        s3_secret=s3_secret, s3_endpoint=s3_endpoint, name=name, namespace=namespace, cpu=cpu, memory=memory,
        gpus=gpus, retries=retries,
    )  # fmt: skip
    manifests.write(manifests.to_yaml(docs, "deploy training-job"), output)
    return 0


@app.command("serve")
@guarded
def serve(
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Registered model, NAME or NAME-onnx (default: the registry's only -onnx model); served as NAME."),
    alias: str = typer.Option(names.DEPLOY_ALIAS, "--alias", help="Alias of NAME-onnx to serve."),
    version: Optional[str] = typer.Option(None, "--version", help="Version of NAME-onnx to serve (instead of --alias)."),
    # As champion.deploy.serve.serve's defaults (see the module docstring for why not read from it).
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
    max_batch_size: int = typer.Option(LIMITS.max_batch_size, "--max-batch-size", help="Most items one ONNX Runtime run takes (and one request may hold)."),
    max_delay_ms: float = typer.Option(LIMITS.max_delay_ms, "--max-delay-ms", help="The longest a request waits for others, already being received, to batch with."),
    max_request_bytes: int = typer.Option(LIMITS.max_request_bytes, "--max-request-bytes", help="Larger request bodies get 413."),
    max_elements: int = typer.Option(LIMITS.max_elements, "--max-elements", help="Most tensor elements per request (decoded images count); more gets 413."),
    reload_seconds: Optional[float] = typer.Option(None, "--reload-on-alias-change", help="Every SECONDS, serve the version --alias has moved to (loaded and verified first)."),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port", help="Also serve the protocol over gRPC on this port (Triton's is 8001); needs grpcio, champion's 'grpc' extra."),
    quiet: bool = QuietOpt,
) -> int:
    """Serve NAME-onnx over the Open Inference Protocol (KServe v2 REST, and gRPC with --grpc-port) with ONNX Runtime, as model NAME.

    Takes the graph's float tensors (as Triton does) or encoded images in the BYTES input `image`,
    prepared exactly as training's were. SIGTERM or Ctrl-C finish in-flight requests, then exit 0;
    SIGHUP serves the version --alias names now, if it has moved.
    """
    from champion.deploy.serve import serve as run_server  # MLflow, numpy, Starlette: only once a command runs

    limits = Limits(max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_request_bytes=max_request_bytes, max_elements=max_elements)
    run_server(model_name, alias, version, host, port, limits, reload_seconds, quiet, grpc_port=grpc_port)
    return 0
