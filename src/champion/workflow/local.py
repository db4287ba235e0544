"""Run a WorkflowTemplate's DAG on this machine: the same commands, conditions and output passing.

This is not Argo. It implements a small, declared subset of it (`SUBSET`) and refuses a document
that uses anything else, so that what it runs is what Argo would run:

- the document must be a valid Argo WorkflowTemplate (`champion.workflow.spec`) whose entrypoint is
  a DAG of container templates;
- DAG tasks: `template`, `arguments.parameters`, `depends` (task names and `task.Result` terms with
  `&&`, `||`, `!`, parentheses; a bare name means Succeeded, Skipped or Daemoned, as in Argo) and
  `when` (one `==` or `!=` comparison of two operands, quoted or bare);
- container templates: `command` and `args` run as a local process (the `champion` entry point on
  PATH), `env` with plain values and `secretKeyRef` (from a dict of Secrets: a missing key of an
  optional ref is left unset, of a required one is an error, as in Kubernetes), `volumeMounts` of
  `emptyDir` volumes (a fresh folder per try, as each pod gets its own) and `persistentVolumeClaim`
  volumes (a folder you map to the claim); container paths under a mount, in args, env values,
  artefact and output paths, are translated to that folder, as a bind mount would (and such folders
  in output values back to the container's paths);
- inputs: parameters (value or default) and `raw` artefacts; outputs: parameters `valueFrom.path`
  with an optional `default` (a missing file without one is an error, as in Argo);
- `retryStrategy`: `limit`, `retryPolicy` OnFailure or Always, `expression` of the form
  `asInt(lastRetry.exitCode) == N` (or `!=`); the backoff is not waited for;
- accepted without effect: `resources`, `securityContext`, `synchronization` (tasks run one at a
  time here, so a mutex always holds), `metadata`, parameter descriptions.

Variables are substituted as Argo does: `{{workflow.parameters.X}}`, `{{workflow.name|namespace|uid}}`,
`{{inputs.parameters.X}}`, `{{retries}}`, `{{tasks.T.outputs.parameters.P}}`. A reference to a task
that produced no outputs (skipped) stays as written in `when` and in a skipped task's arguments,
which is what makes a quoted comparison with it false; in a task that runs it is an error.

Tasks run one at a time in the DAG's order. As Argo's DAG does by default (failFast), after a task
fails no further task starts and the workflow fails. A task whose `depends` is false is Omitted, a
task whose `when` is false Skipped; skipped or not, the workflow Succeeds when nothing failed.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import yaml

from champion.errors import ConfigError
from champion.files import MARKER, claim
from champion.workflow import spec
# TaskRun, WorkflowRun and PASSED_ENV belong to the executor; callers reach them as local.* too.
from champion.workflow.executor import PASSED_ENV, RETRY_EXPRESSION, WHEN, Executor, TaskRun, WorkflowRun  # noqa: F401

RUNS_DIR = Path("workflow-runs")  # where runs go without --workdir, under the current folder
WORKDIR_KIND = "workflow-run"  # the marker kind of a run's folder (champion.files.claim)

# The keys run-local implements, per kind of object (anything else is refused).
SUBSET: dict[str, set[str]] = {
    "document": {"apiVersion", "kind", "metadata", "spec"},
    "metadata": {"name", "namespace", "labels", "annotations"},
    "spec": {"entrypoint", "arguments", "templates", "volumes"},
    "arguments": {"parameters"},
    "workflow parameter": {"name", "value", "description"},
    "volume": {"name", "emptyDir", "persistentVolumeClaim"},
    "persistentVolumeClaim": {"claimName", "readOnly"},
    "dag template": {"name", "dag"},
    "dag": {"tasks"},
    "task": {"name", "template", "arguments", "depends", "when"},
    "task arguments": {"parameters"},
    "task argument": {"name", "value"},
    "container template": {"name", "container", "inputs", "outputs", "retryStrategy", "synchronization", "metadata", "securityContext"},
    "container": {"image", "command", "args", "env", "volumeMounts", "resources"},
    "env": {"name", "value", "valueFrom"},
    "env valueFrom": {"secretKeyRef"},
    "secretKeyRef": {"name", "key", "optional"},
    "volumeMount": {"name", "mountPath", "readOnly"},
    "inputs": {"parameters", "artifacts"},
    "input parameter": {"name", "value", "default", "description"},
    "input artifact": {"name", "path", "raw"},
    "raw": {"data"},
    "outputs": {"parameters"},
    "output parameter": {"name", "valueFrom", "description"},
    "output valueFrom": {"path", "default"},
    "retryStrategy": {"limit", "retryPolicy", "expression", "backoff"},
    "synchronization": {"mutexes"},
    "mutex": {"name"},
}
class Unsupported(ConfigError):
    """The document uses Argo features outside run-local's declared subset."""


def load(path: Path) -> dict[str, Any]:
    """Read a WorkflowTemplate YAML file.

    Raises:
        ConfigError: unreadable, not YAML, or not a WorkflowTemplate.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not YAML: {exc}") from None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind != "WorkflowTemplate" or doc.get("apiVersion") != "argoproj.io/v1alpha1":
        what = f"a {kind}" if kind else f"a {type(doc).__name__}" if doc is not None else "empty"
        raise ConfigError(
            f"{path} is {what}, not an Argo WorkflowTemplate (apiVersion argoproj.io/v1alpha1, kind WorkflowTemplate); "
            "run-local runs what `champion workflow argo` writes"
        )
    return doc


def check_subset(doc: dict[str, Any]) -> None:
    """Refuse what run-local does not implement (after `spec.check` has found the document valid Argo).

    Raises:
        Unsupported: every key outside `SUBSET`, and any unsupported form, each with its place.
    """
    found: list[str] = []

    def keys(obj: dict, kind: str, where: str) -> None:
        for key in obj:
            if key not in SUBSET[kind]:
                found.append(f"{where}.{key}" if where else key)

    keys(doc, "document", "")
    keys(doc["metadata"], "metadata", "metadata")
    s = doc["spec"]
    keys(s, "spec", "spec")
    keys(s.get("arguments") or {}, "arguments", "spec.arguments")
    for i, p in enumerate((s.get("arguments") or {}).get("parameters") or []):
        keys(p, "workflow parameter", f"spec.arguments.parameters[{i}]")
    for i, v in enumerate(s.get("volumes") or []):
        keys(v, "volume", f"spec.volumes[{i}]")
        if "persistentVolumeClaim" in v:
            keys(v["persistentVolumeClaim"], "persistentVolumeClaim", f"spec.volumes[{i}].persistentVolumeClaim")
        if v.get("emptyDir"):
            found.append(f"spec.volumes[{i}].emptyDir: medium and sizeLimit")
    templates = {t["name"]: t for t in s["templates"]}
    for name, t in templates.items():
        at = f"spec.templates.{name}"
        if "dag" in t:
            keys(t, "dag template", at)
            keys(t["dag"], "dag", f"{at}.dag")
            for task in t["dag"].get("tasks") or []:
                where = f"{at}.dag.tasks.{task['name']}"
                keys(task, "task", where)
                keys(task.get("arguments") or {}, "task arguments", f"{where}.arguments")
                for p in (task.get("arguments") or {}).get("parameters") or []:
                    keys(p, "task argument", f"{where}.arguments.parameters.{p['name']}")
                if task.get("when") and not WHEN.fullmatch(spec.REFERENCE.sub("x", task["when"])):
                    found.append(f"{where}.when: {task['when']!r} (only one == or != comparison)")
                if task.get("template") in templates and "container" not in templates[task["template"]]:
                    found.append(f"{where}.template: {task['template']!r} is not a container template (no nested DAGs)")
        elif "container" in t:
            _check_container_template(t, at, keys, found)
        else:
            found.append(f"{at}: only container and DAG templates")
    if "dag" not in templates.get(s["entrypoint"], {}):
        found.append(f"spec.entrypoint: {s['entrypoint']!r} is not a DAG template")
    if found:
        raise Unsupported(
            "champion workflow run-local implements a declared subset of Argo (docs/workflow.md) and does not run this "
            "document, which uses:\n  " + "\n  ".join(found)
        )


def _check_container_template(t: dict, at: str, keys, found: list[str]) -> None:
    keys(t, "container template", at)
    c = t["container"]
    keys(c, "container", f"{at}.container")
    if not c.get("command"):
        found.append(f"{at}.container.command: missing (run-local does not know the image's entrypoint)")
    for j, e in enumerate(c.get("env") or []):
        keys(e, "env", f"{at}.container.env[{j}]")
        if "valueFrom" in e:
            keys(e["valueFrom"], "env valueFrom", f"{at}.container.env[{j}].valueFrom")
            keys(e["valueFrom"].get("secretKeyRef") or {}, "secretKeyRef", f"{at}.container.env[{j}].valueFrom.secretKeyRef")
    for j, mount in enumerate(c.get("volumeMounts") or []):
        keys(mount, "volumeMount", f"{at}.container.volumeMounts[{j}]")
    keys(t.get("inputs") or {}, "inputs", f"{at}.inputs")
    for p in (t.get("inputs") or {}).get("parameters") or []:
        keys(p, "input parameter", f"{at}.inputs.parameters.{p['name']}")
    for a in (t.get("inputs") or {}).get("artifacts") or []:
        keys(a, "input artifact", f"{at}.inputs.artifacts.{a['name']}")
        if "raw" not in a:
            found.append(f"{at}.inputs.artifacts.{a['name']}: only raw artefacts")
        keys(a.get("raw") or {}, "raw", f"{at}.inputs.artifacts.{a['name']}.raw")
    keys(t.get("outputs") or {}, "outputs", f"{at}.outputs")
    for p in (t.get("outputs") or {}).get("parameters") or []:
        keys(p, "output parameter", f"{at}.outputs.parameters.{p['name']}")
        if "path" not in (p.get("valueFrom") or {}):
            found.append(f"{at}.outputs.parameters.{p['name']}: only valueFrom.path")
        keys(p.get("valueFrom") or {}, "output valueFrom", f"{at}.outputs.parameters.{p['name']}.valueFrom")
    retry = t.get("retryStrategy") or {}
    keys(retry, "retryStrategy", f"{at}.retryStrategy")
    if retry.get("retryPolicy", "OnFailure") not in ("OnFailure", "Always"):
        found.append(f"{at}.retryStrategy.retryPolicy: {retry['retryPolicy']!r} (only OnFailure, Always)")
    if "expression" in retry and not RETRY_EXPRESSION.fullmatch(retry["expression"]):
        found.append(f"{at}.retryStrategy.expression: {retry['expression']!r} (only asInt(lastRetry.exitCode) == N or != N)")
    sync = t.get("synchronization") or {}
    keys(sync, "synchronization", f"{at}.synchronization")
    for mutex in sync.get("mutexes") or []:
        keys(mutex, "mutex", f"{at}.synchronization.mutexes")


def run(
    doc: dict[str, Any],
    folder: Path,
    parameters: dict[str, str] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
    claims: dict[str, Path] | None = None,
    env: dict[str, str] | None = None,
    quiet: bool = False,
) -> WorkflowRun:
    """Run the WorkflowTemplate `doc`'s entrypoint DAG in `folder` (one sub-folder per task).

    Args:
        doc: The WorkflowTemplate (as `load` returns it).
        folder: Where each task's tries run and log (`<task>/try-<n>/{cwd,stdout,stderr,volumes}`).
        parameters: Workflow parameter values, as `argo submit -p NAME=VALUE` gives them.
        secrets: Kubernetes Secrets as {secret name: {key: value}}, for `secretKeyRef`.
        claims: The folder that backs each PersistentVolumeClaim, by claim name.
        env: More environment for every step, on top of the template's (for tests and debugging).
        quiet: No progress lines on stderr.

    Raises:
        SpecError: the document is not valid Argo.
        Unsupported: it uses Argo features outside the subset.
        ConfigError: an unknown workflow parameter, or a claim with no folder.
    """
    spec.check(doc)
    check_subset(doc)
    s = doc["spec"]
    declared = {p["name"]: p.get("value") for p in (s.get("arguments") or {}).get("parameters") or []}
    for key in parameters or {}:
        if key not in declared:
            raise ConfigError(f"-p {key}: the template has no parameter {key!r} (parameters: {', '.join(declared)})")
    values = {**declared, **(parameters or {})}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ConfigError(f"workflow parameter(s) {', '.join(missing)} have no value: give -p NAME=VALUE")
    name = f"{doc['metadata']['name']}-{uuid.uuid4().hex[:5]}"
    scope = {f"workflow.parameters.{k}": str(v) for k, v in values.items()}
    scope |= {spec.WORKFLOW_NAME: name, spec.WORKFLOW_NAMESPACE: doc["metadata"].get("namespace", "default"),
              spec.WORKFLOW_UID: str(uuid.uuid4()), "workflow.serviceAccountName": "default"}  # fmt: skip
    volumes = {v["name"]: v for v in s.get("volumes") or []}
    for v in volumes.values():
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and claim not in (claims or {}):
            raise ConfigError(f"volume {v['name']!r} is the PersistentVolumeClaim {claim!r}: map it to a folder with --volume {claim}=DIR")
    executor = Executor(doc, Path(folder), scope, secrets or {}, claims or {}, env or {}, quiet)
    return executor.run_dag(name)


def read_secrets(path: Path) -> dict[str, dict[str, str]]:
    """A YAML file of Secrets for `secretKeyRef`: {secret name: {key: value}}.

    Raises:
        ConfigError: unreadable, or not a mapping of mappings of strings.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--secrets {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in data.values()):
        raise ConfigError(f"--secrets {path}: expected {{secret name: {{KEY: value}}}} with string values")
    return {str(k): {str(kk): vv for kk, vv in v.items()} for k, v in data.items()}


def pairs(items: list[str] | None, flag: str) -> Iterator[tuple[str, str]]:
    """NAME=VALUE command-line pairs.

    Raises:
        ConfigError: an item without '='.
    """
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected NAME=VALUE")
        yield key, value


def default_workdir(doc: dict[str, Any], when: time.struct_time | None = None) -> Path:
    """`workflow-runs/<metadata.name>-<YYYYmmdd-HHMMSS>`: a new folder for each run of the template.

    Args:
        doc: The WorkflowTemplate; a document without `metadata.name` is called `workflow`.
        when: The local time to name the folder by (default: now).
    """
    name = (doc.get("metadata") or {}).get("name", "workflow")
    return RUNS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S', when or time.localtime())}"


def claim_workdir(folder: Path) -> Path:
    """Make `folder` (resolved) a run's folder: created and marked as champion's; a folder that already
    holds a run, or anything else, is refused so that two runs never mix their tasks' folders.

    Returns:
        The absolute folder.

    Raises:
        ConfigError: the folder holds anything besides champion's marker, or is another kind's.
    """
    folder = Path(folder).resolve()
    if folder.is_dir() and any(p.name != MARKER for p in folder.iterdir()):
        raise ConfigError(f"--workdir {folder} already holds a run: choose a new or empty folder")
    return claim(folder, WORKDIR_KIND)
