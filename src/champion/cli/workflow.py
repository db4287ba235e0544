"""`champion workflow`: the Argo WorkflowTemplate (champion.workflow.argo) and a local run of it
(champion.workflow.local)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from champion.cli.common import ConfigOpt, QuietOpt, SetOpt, _emit, app, guarded
from champion.config import load_config
from champion.workflow import argo, local

ARGO = argo.Options()  # the template's defaults, shown by --help

workflow_app = typer.Typer(
    help="Run the steps as an Argo Workflow: the WorkflowTemplate (argo), and a local run of it (run-local).",
    no_args_is_help=True,
)
app.add_typer(workflow_app, name="workflow")


@workflow_app.command("argo")
@guarded
def workflow_argo(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    image: Optional[str] = typer.Option(None, "--image", help="Container image of every step (default: champion:<version>, what the Dockerfile builds)."),
    name: Optional[str] = typer.Option(None, "--name", help="WorkflowTemplate name, DNS-1123 (default: champion-<model.name>)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Namespace of the WorkflowTemplate (default: kubectl's current one)."),
    gpus: int = typer.Option(ARGO.gpus, "--gpus", help="GPUs for the train step (nvidia.com/gpu); also sets training.accelerator=gpu and training.devices."),
    cpu: str = typer.Option(ARGO.cpu, "--cpu", help="CPU request of the train step (a Kubernetes quantity)."),
    memory: str = typer.Option(ARGO.memory, "--memory", help="Memory request and limit of the train step."),
    secret: str = typer.Option(ARGO.secret, "--secret", help="Kubernetes Secret the steps read credentials from, by reference (docs/workflow.md lists the keys)."),
    tracking_uri: str = typer.Option(ARGO.tracking_uri, "--tracking-uri", help="Default of the tracking-uri parameter: the MLflow server every step talks to."),
    triton_repository: Optional[str] = typer.Option(None, "--triton-repository", help="Default of the triton-repository parameter: s3://bucket/prefix, or /models/… with --models-volume."),
    models_volume: Optional[str] = typer.Option(None, "--models-volume", help="PersistentVolumeClaim mounted at /models: the Triton repository and training checkpoints (a retried train resumes)."),
) -> int:
    """Print an Argo WorkflowTemplate (YAML) that runs the steps, one container each.

    train -> promote -> card, and export -> validate -> deploy triton when the gates pass. Built with hera and checked against Argo's schema. The config (--config, --set) becomes the `config`
    parameter; nothing is written when it has an unknown key or any option is bad (exit 2).
    Submit with `kubectl apply -f wf.yaml` and `argo submit --from workflowtemplate/NAME`.
    """
    cfg = load_config(config, set_)  # the file and --set only: the environment is the pods', not this shell's
    opts = argo.Options(
        image=image or ARGO.image, name=name, namespace=namespace, gpus=gpus, cpu=cpu, memory=memory,
        secret=secret, tracking_uri=tracking_uri, triton_repository=triton_repository, models_volume=models_volume,
    )  # fmt: skip
    sys.stdout.write(argo.render(cfg, opts))
    return 0


def _task_line(task: local.TaskRun) -> str:
    """One finished task, tab-separated: name, phase, exit code, CPU time, and its outputs (or why not)."""
    outputs = " ".join(f"{k}={v}" for k, v in task.outputs.items())
    code = "" if task.exit_code is None else f"exit {task.exit_code}"
    cpu = f"cpu {task.cpu_seconds:.1f}s" if task.attempts else ""
    return "\t".join((task.name, task.phase, code, cpu, outputs or task.message))


@workflow_app.command("run-local")
@guarded
def workflow_run_local(
    path: Path = typer.Argument(..., help="WorkflowTemplate YAML, as `champion workflow argo` writes it."),
    param: Optional[list[str]] = typer.Option(None, "--parameter", "-p", help="Workflow parameter NAME=VALUE (as argo submit -p). Repeatable."),
    secrets: Optional[Path] = typer.Option(None, "--secrets", help="YAML {secret name: {KEY: value}} for the template's secretKeyRefs."),
    volume: Optional[list[str]] = typer.Option(None, "--volume", help="CLAIM=DIR: the folder that backs a PersistentVolumeClaim. Repeatable."),
    env: Optional[list[str]] = typer.Option(None, "--env", help="NAME=VALUE added to every step's environment. Repeatable."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the tasks run and log (default: workflow-runs/<name>-<time>)."),
    quiet: bool = QuietOpt,
) -> int:
    """Run a WorkflowTemplate's DAG on this machine (a declared subset of Argo).

    Each container's command runs as a local process, with Argo's parameter substitution, depends,
    when, retries and output parameters (docs/workflow.md lists the subset; anything else is refused).
    Prints each task's phase and outputs; exit 0 when the workflow Succeeded, 1 when not.
    """
    doc = local.load(path)
    secret_values = local.read_secrets(secrets) if secrets else {}
    claims = {k: Path(v).resolve() for k, v in local.pairs(volume, "--volume")}
    folder = local.claim_workdir(workdir or local.default_workdir(doc))
    result = local.run(doc, folder, dict(local.pairs(param, "--parameter")), secret_values, claims, dict(local.pairs(env, "--env")), quiet)
    for task in result.tasks.values():
        print(_task_line(task))
    _emit({"WORKFLOW": result.name, "WORKFLOW_PHASE": result.phase, "WORKFLOW_FOLDER": str(result.folder)}, None)
    return 0 if result.phase == "Succeeded" else 1
