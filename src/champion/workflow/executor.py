"""How `champion workflow run-local` runs a DAG: tasks one at a time, each container as a local process.

champion.workflow.local checks a WorkflowTemplate against the declared subset and starts a run;
this module carries it out with Argo's semantics: parameter substitution, `depends` and `when`,
retries by exit code, output parameters, emptyDir and claimed volumes mapped to folders.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from champion.errors import ChampionError
from champion.workflow import spec

RETRY_EXPRESSION = re.compile(r"\s*asInt\(lastRetry\.exitCode\)\s*(==|!=)\s*(-?\d+)\s*")
_OPERAND = r"""("[^"]*"|'[^']*'|[^\s"'=!{}]+)"""  # bare: govaluate's variables, taken as strings
WHEN = re.compile(rf"\s*{_OPERAND}\s*(==|!=)\s*{_OPERAND}\s*")
# What a step sees of this machine's environment besides the template's `env` (a container sees
# only its image's environment): enough to find `champion`, a home, a locale, temp and cache folders.
PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME")


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


class Executor:
    """One run of a checked WorkflowTemplate: its DAG's tasks, their tries' folders and processes."""

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
        return WorkflowRun(name, self.scope[spec.WORKFLOW_UID], phase, done, self.folder)

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
