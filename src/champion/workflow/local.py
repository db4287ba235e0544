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

import os
import re
import resource
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from champion.errors import ChampionError, ConfigError
from champion.workflow import spec
from champion import names

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
RETRY_EXPRESSION = re.compile(r"\s*asInt\(lastRetry\.exitCode\)\s*(==|!=)\s*(-?\d+)\s*")
_OPERAND = r"""("[^"]*"|'[^']*'|[^\s"'=!{}]+)"""  # bare: govaluate's variables, taken as strings
WHEN = re.compile(rf"\s*{_OPERAND}\s*(==|!=)\s*{_OPERAND}\s*")
# What a step sees of this machine's environment besides the template's `env` (a container sees
# only its image's environment): enough to find `champion`, a home, a locale, temp and cache folders.
PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME")


class Unsupported(ConfigError):
    """The document uses Argo features outside run-local's declared subset."""


@dataclass
class TaskRun:
    """One DAG task: its phase as Argo would show it, and what it ran and produced."""

    name: str
    phase: str  # Succeeded, Failed, Error, Skipped, Omitted
    message: str = ""
    command: list[str] = field(default_factory=list)  # command + args as the container gets them
    exit_code: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    folder: Path | None = None  # the tries' working folders, logs and volumes
    cpu_seconds: float = 0.0  # user + system CPU time of its processes, all tries


@dataclass
class WorkflowRun:
    name: str
    uid: str
    phase: str  # Succeeded or Failed
    tasks: dict[str, TaskRun]
    folder: Path


def load(path: Path) -> dict[str, Any]:
    """Read a WorkflowTemplate YAML file.

    Raises:
        ConfigError: unreadable, not YAML, or not a WorkflowTemplate.
    """
    import yaml

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
    scope |= {names.WORKFLOW_NAME: name, names.WORKFLOW_NAMESPACE: doc["metadata"].get("namespace", "default"),
              names.WORKFLOW_UID: str(uuid.uuid4()), "workflow.serviceAccountName": "default"}  # fmt: skip
    volumes = {v["name"]: v for v in s.get("volumes") or []}
    for v in volumes.values():
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and claim not in (claims or {}):
            raise ConfigError(f"volume {v['name']!r} is the PersistentVolumeClaim {claim!r}: map it to a folder with --volume {claim}=DIR")
    executor = _Executor(doc, Path(folder), scope, secrets or {}, claims or {}, env or {}, quiet)
    return executor.run_dag(name)


class _Executor:
    def __init__(self, doc, folder: Path, scope: dict[str, str], secrets, claims, env, quiet: bool) -> None:
        self.templates = {t["name"]: t for t in doc["spec"]["templates"]}
        self.entry = self.templates[doc["spec"]["entrypoint"]]
        self.volumes = {v["name"]: v for v in doc["spec"].get("volumes") or []}
        self.folder, self.scope, self.secrets, self.claims, self.env, self.quiet = folder, scope, secrets, claims, env, quiet
        self.cpu_seconds = 0.0  # of the last try's process

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def run_dag(self, name: str) -> WorkflowRun:
        tasks = self.entry["dag"]["tasks"]
        done: dict[str, TaskRun] = {}
        failed = False
        while not failed and len(done) < len(tasks):
            ready = [t for t in tasks if t["name"] not in done and spec.depends_names(t.get("depends"))[0] <= done.keys()]
            task = ready[0]  # the DAG has no cycle (spec.check), so a task is always ready
            result = self.run_task(task, done)
            done[task["name"]] = result
            shown = f" exit {result.exit_code}" if result.exit_code is not None else ""
            shown += f" ({result.attempts} tries)" if result.attempts > 1 else ""
            shown += f", cpu {result.cpu_seconds:.1f} s" if result.attempts else ""
            self.say(f"[{task['name']}] {result.phase}{shown}{': ' + result.message if result.message else ''}")
            failed = result.phase in ("Failed", "Error")
        phase = "Failed" if failed else "Succeeded"
        self.say(f"workflow {name} {phase}")
        return WorkflowRun(name, self.scope[names.WORKFLOW_UID], phase, done, self.folder)

    def run_task(self, task: dict, done: dict[str, TaskRun]) -> TaskRun:
        name = task["name"]
        if not _depends(task.get("depends"), {k: v.phase for k, v in done.items()}):
            return TaskRun(name, "Omitted", f"depends condition {task['depends']!r} not met")
        # As Argo resolves a DAG task: what can be resolved is, the rest is left as written.
        scope = self.scope | {f"tasks.{k}.outputs.parameters.{p}": v for k, r in done.items() for p, v in r.outputs.items()}
        scope |= {f"tasks.{k}.status": r.phase for k, r in done.items()}
        when = _substitute(task.get("when") or "", scope, allow_unresolved=True)
        try:
            if when and not _when(when):
                return TaskRun(name, "Skipped", f"when {when!r} evaluated false")
        except _StepError as exc:  # e.g. an unquoted reference left unresolved: Argo's Error too
            return TaskRun(name, "Error", str(exc))
        template = self.templates[task["template"]]
        try:
            given = {p["name"]: _substitute(str(p.get("value", "")), scope) for p in (task.get("arguments") or {}).get("parameters") or []}
            inputs = {}
            for p in (template.get("inputs") or {}).get("parameters") or []:
                value = given.get(p["name"], p.get("value", p.get("default")))
                if value is None:
                    raise _StepError(f"input parameter {p['name']!r} was not supplied")
                inputs[f"inputs.parameters.{p['name']}"] = str(value)
        except _StepError as exc:
            return TaskRun(name, "Error", str(exc))
        return self.run_container(name, template, self.scope | inputs)

    def run_container(self, name: str, template: dict, scope: dict[str, str]) -> TaskRun:
        retry = template.get("retryStrategy") or {}
        limit = int(retry.get("limit", 0)) if retry else 0
        result = TaskRun(name, "Failed", folder=self.folder / name)
        for attempt in range(limit + 1):
            result.attempts = attempt + 1
            try:
                code, outputs, command = self.attempt(name, template, scope | {"retries": str(attempt)}, attempt)
            except _StepError as exc:
                result.phase, result.message = "Error", str(exc)
                return result
            result.exit_code, result.command = code, command
            result.cpu_seconds += self.cpu_seconds
            if code == 0:
                result.phase, result.outputs, result.message = "Succeeded", outputs, ""
                return result
            result.message = f"exit code {code}"
            if not retry or not _retry(retry, code) or attempt == limit:
                break
            self.say(f"[{name}] exit {code}: retrying ({attempt + 1} of {limit})")
        return result

    def attempt(self, name: str, template: dict, scope: dict[str, str], attempt: int) -> tuple[int, dict[str, str], list[str]]:
        """One try of a container template: a fresh pod's worth of folders, the process, its outputs."""
        c = template["container"]
        self.cpu_seconds = 0.0
        root = self.folder / name / f"try-{attempt + 1}"
        mounts = self.mounts(c, root)

        def local(text: str) -> str:  # a container path under a mount, wherever it starts a value or follows '='
            for mount_path, folder in mounts:
                text = re.sub(rf"(^|=){re.escape(mount_path)}(?=/|$)", lambda m: m.group(1) + str(folder), text)
            return text

        command = [_substitute(str(a), scope) for a in [*c["command"], *(c.get("args") or [])]]
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ} | self.env
        for e in c.get("env") or []:
            if "valueFrom" in e:
                ref = e["valueFrom"]["secretKeyRef"]
                value = self.secrets.get(ref["name"], {}).get(ref["key"])
                if value is None and not ref.get("optional"):
                    raise _StepError(f"env {e['name']}: secret {ref['name']!r} has no key {ref['key']!r} (and the ref is not optional)")
                if value is not None:
                    env[e["name"]] = value
            else:
                env[e["name"]] = local(_substitute(str(e.get("value", "")), scope))
        for a in (template.get("inputs") or {}).get("artifacts") or []:
            path = Path(self.under_mount(a["path"], mounts, f"input artefact {a['name']!r}"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_substitute(a["raw"]["data"], scope))
        outputs_at = {p["name"]: (self.under_mount(_substitute(p["valueFrom"]["path"], scope), mounts, f"output {p['name']!r}"),
                                  p["valueFrom"].get("default"))
                      for p in (template.get("outputs") or {}).get("parameters") or []}  # fmt: skip
        exe = shutil.which(command[0], path=env.get("PATH"))
        if exe is None:
            raise _StepError(f"{command[0]!r} is not on PATH ({env.get('PATH')})")
        cwd = root / "cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(root / "stdout", "w") as out, open(root / "stderr", "w") as err:
            code = subprocess.run([exe, *(local(a) for a in command[1:])], cwd=cwd, env=env, stdout=out, stderr=err).returncode
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_seconds = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if code != 0:
            tail = (root / "stderr").read_text().strip().splitlines()[-5:]
            self.say(f"[{name}] stderr ({root / 'stderr'}):\n    " + "\n    ".join(tail))
            return code, {}, command
        outputs = {}
        for pname, (path, default) in outputs_at.items():
            if Path(path).is_file():
                outputs[pname] = self.in_container(Path(path).read_text(), mounts)
            elif default is not None:
                outputs[pname] = str(default)
            else:
                raise _StepError(f"output parameter {pname!r}: {path} was not written and has no default")
        return code, outputs, command

    def mounts(self, container: dict, root: Path) -> list[tuple[str, Path]]:
        """(mount path, local folder) for each volume mount, longest path first."""
        found = []
        for mount in container.get("volumeMounts") or []:
            volume = self.volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                folder = Path(self.claims[volume["persistentVolumeClaim"]["claimName"]])
            else:  # emptyDir: each pod (each try) starts with an empty one
                folder = root / "volumes" / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            found.append((mount["mountPath"].rstrip("/") or "/", folder))
        return sorted(found, key=lambda m: -len(m[0]))

    @staticmethod
    def in_container(value: str, mounts: list[tuple[str, Path]]) -> str:
        """A path the process wrote (a local folder) as the container would have written it."""
        for mount_path, folder in mounts:
            if value == str(folder) or value.startswith(f"{folder}/"):
                return mount_path + value[len(str(folder)):]
        return value

    @staticmethod
    def under_mount(path: str, mounts: list[tuple[str, Path]], what: str) -> str:
        for mount_path, folder in mounts:
            if path == mount_path or path.startswith(mount_path + "/"):
                return str(folder) + path[len(mount_path):]
        raise _StepError(f"{what} at {path} is not under a volume mount: run-local only maps mounted volumes to folders")


class _StepError(ChampionError):
    """A task that cannot start or finish as Argo would have it (Argo's Error phase)."""


def _substitute(text: str, scope: dict[str, str], allow_unresolved: bool = False) -> str:
    def one(match: re.Match) -> str:
        key = match.group(1).strip()
        if key in scope:
            return scope[key]
        if allow_unresolved:
            return match.group(0)
        raise _StepError(f"failed to resolve {{{{{key}}}}}")

    return spec.REFERENCE.sub(one, text)


def _when(expression: str) -> bool:
    match = WHEN.fullmatch(expression)
    if match is None:
        raise _StepError(f"invalid when expression {expression!r}")
    left, op, right = (g[1:-1] if g[:1] in "'\"" and len(g) > 1 else g for g in match.groups())
    return (left == right) if op == "==" else (left != right)


def _retry(retry: dict, code: int) -> bool:
    match = RETRY_EXPRESSION.fullmatch(retry.get("expression", "")) if "expression" in retry else None
    if match is None:
        return True  # no expression: every failure is retried (OnFailure and Always alike, for a process)
    return (code == int(match.group(2))) == (match.group(1) == "==")


def _depends(expression: str | None, phases: dict[str, str]) -> bool:
    """Evaluate an Argo `depends` expression over the finished tasks' phases."""
    if not expression:
        return True
    tokens = iter(re.findall(r"&&|\|\||[()!]|[^\s()!&|]+", expression) + [""])
    current = [next(tokens)]

    def advance() -> str:
        current[0] = next(tokens)
        return current[0]

    def term() -> bool:
        tok = current[0]
        if tok == "!":
            advance()
            return not term()
        if tok == "(":
            advance()
            value = disjunction()
            advance()  # the ")"
            return value
        advance()
        name, _, result = tok.partition(".")
        phase = phases.get(name)
        if not result:
            return phase in ("Succeeded", "Skipped", "Daemoned")
        return phase == {"AnySucceeded": "Succeeded", "AllFailed": "Failed", "Errored": "Error"}.get(result, result)

    def conjunction() -> bool:
        value = term()
        while current[0] == "&&":
            advance()
            value = term() and value
        return value

    def disjunction() -> bool:
        value = conjunction()
        while current[0] == "||":
            advance()
            value = conjunction() or value
        return value

    return disjunction()


def read_secrets(path: Path) -> dict[str, dict[str, str]]:
    """A YAML file of Secrets for `secretKeyRef`: {secret name: {key: value}}.

    Raises:
        ConfigError: unreadable, or not a mapping of mappings of strings.
    """
    import yaml

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
