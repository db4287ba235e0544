"""Is a WorkflowTemplate document valid Argo? Keys, names and references, checked before any use.

hera's models mirror Argo's schema (generated from Argo's own JSON schema) but accept unknown keys
silently, and neither they nor a YAML parser know Argo's naming and reference rules. `problems`
walks the document and reports:

- keys that are not fields of the Argo or Kubernetes object at that place (field names and aliases
  taken from `hera.workflows.models`), values of the wrong kind, required fields that are missing;
- names that are not DNS-1123 labels (templates, tasks, parameters, artifacts, volumes, mutexes,
  the template itself: lower-case letters, digits and '-'; Argo refuses '_' in names);
- references to things that are not declared: the entrypoint, a task's template, a `depends` task,
  a volume mount's volume, `{{workflow.parameters.X}}`, `{{inputs.parameters.X}}`,
  `{{tasks.T.outputs.parameters.P}}` (T must be an upstream task of the one that uses it, and its
  template must declare P), arguments a template does not declare and inputs nobody supplies.
"""

from __future__ import annotations

import re
import types
import typing
from enum import Enum
from typing import Any, Union

from pydantic import BaseModel, RootModel

from champion.errors import ConfigError
from champion.deploy import manifests

# hera's models are imported inside `problems` (hera takes a second to import): `champion --help`
# imports this module, and only checking a WorkflowTemplate needs them.

DNS1123_LABEL = manifests.DNS_LABEL  # names Argo checks: Kubernetes' label rule, defined once
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REFERENCE = re.compile(r"\{\{(.*?)\}\}")
# Argo's global variables that need no declaration (those champion's templates may use).
# Argo's global variables ({{workflow.name}}, ...) that a template may reference.
WORKFLOW_NAME, WORKFLOW_NAMESPACE, WORKFLOW_UID = "workflow.name", "workflow.namespace", "workflow.uid"
WORKFLOW_PARAMETERS = "workflow.parameters."  # prefix of {{workflow.parameters.NAME}}
GLOBALS = {WORKFLOW_NAME, WORKFLOW_NAMESPACE, WORKFLOW_UID, "workflow.creationTimestamp", "workflow.serviceAccountName"}
# Variables of the template that runs: the retry count and the pod's name.
TEMPLATE_LOCALS = {"retries", "pod.name", "node.name"}
TASK_FIELDS = {"status", "exitCode", "id", "startedAt", "finishedAt", "ip", "outputs.result"}
RESULTS = {"Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "AnySucceeded", "AllFailed"}


class SpecError(ConfigError):
    """The document is not a valid Argo WorkflowTemplate; the message lists every problem."""


def check(doc: Any) -> None:
    """Raise SpecError listing every problem `problems` finds in `doc`; return quietly when there is none."""
    found = problems(doc)
    if found:
        shown = "\n  ".join(found[:40]) + (f"\n  … and {len(found) - 40} more" if len(found) > 40 else "")
        raise SpecError(f"not a valid Argo WorkflowTemplate ({len(found)} problem(s)):\n  {shown}")


def problems(doc: Any) -> list[str]:
    """Every problem with `doc` as an Argo WorkflowTemplate (empty when there is none)."""
    from hera.workflows.models import WorkflowTemplate

    if not isinstance(doc, dict):
        return [f"the document is a {type(doc).__name__}, not a mapping"]
    out: list[str] = []
    if doc.get("apiVersion") != "argoproj.io/v1alpha1":
        out.append(f"apiVersion: {doc.get('apiVersion')!r}, expected 'argoproj.io/v1alpha1'")
    if doc.get("kind") != "WorkflowTemplate":
        out.append(f"kind: {doc.get('kind')!r}, expected 'WorkflowTemplate'")
    _walk(doc, WorkflowTemplate, "", out)
    if not out:  # names and references only once the shape is right, so that each is reported once
        _names(doc, out)
        _references(doc, out)
    return out


# --- keys and value kinds, from hera's generated models --------------------------------------------


def _walk(value: Any, annotation: Any, path: str, out: list[str]) -> None:
    where = path or "(document)"
    arms = _arms(annotation)
    if value is None:
        if type(None) not in arms:
            out.append(f"{where}: null is not allowed here")
        return
    arms = [a for a in arms if a is not type(None)]
    if len(arms) > 1:  # a union: the first arm that takes the value without a problem
        for arm in arms:
            trial: list[str] = []
            _walk(value, arm, path, trial)
            if not trial:
                return
        _walk(value, arms[0], path, out)
        return
    ann = arms[0]
    origin = typing.get_origin(ann)
    if ann is Any:
        return
    if origin is typing.Literal:
        if value not in typing.get_args(ann):
            out.append(f"{where}: {value!r} is not one of {list(typing.get_args(ann))}")
        return
    if origin is list:
        if not isinstance(value, list):
            out.append(f"{where}: expected a list, not {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _walk(item, typing.get_args(ann)[0], f"{path}[{i}]", out)
        return
    if origin is dict:
        if not isinstance(value, dict):
            out.append(f"{where}: expected a mapping, not {type(value).__name__}")
            return
        for key, item in value.items():
            _walk(item, typing.get_args(ann)[1], f"{path}.{key}", out)
        return
    if isinstance(ann, type) and issubclass(ann, RootModel):
        if ann.__name__ == "Quantity" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return  # Kubernetes takes a number where it takes a quantity string
        _walk(value, ann.model_fields["root"].annotation, path, out)
        return
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        if not isinstance(value, dict):
            out.append(f"{where}: expected a mapping ({ann.__name__}), not {type(value).__name__}")
            return
        fields = {(f.alias or name): f for name, f in ann.model_fields.items()}
        for key, item in value.items():
            if key not in fields:
                out.append(f"{path + '.' if path else ''}{key}: Argo's {ann.__name__} has no such field "
                           f"(known: {', '.join(sorted(fields))})")  # fmt: skip
                continue
            _walk(item, fields[key].annotation, f"{path + '.' if path else ''}{key}", out)
        for key, f in fields.items():
            if f.is_required() and key not in value:
                out.append(f"{path + '.' if path else ''}{key}: required by {ann.__name__}, missing")
        return
    if isinstance(ann, type) and issubclass(ann, Enum):
        if value not in {e.value for e in ann}:
            out.append(f"{where}: {value!r} is not one of {[e.value for e in ann]}")
        return
    _scalar(value, ann, where, out)


def _arms(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [a for arm in typing.get_args(annotation) for a in _arms(arm)]
    return [annotation]


def _scalar(value: Any, ann: Any, where: str, out: list[str]) -> None:
    expected = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}.get(ann)
    if expected is None:  # dates, bytes: YAML gives strings for them
        if not isinstance(value, (str, int, float)):
            out.append(f"{where}: expected a scalar ({getattr(ann, '__name__', ann)}), not {type(value).__name__}")
        return
    if not isinstance(value, expected) or (ann is not bool and isinstance(value, bool)):
        out.append(f"{where}: expected {ann.__name__}, not {type(value).__name__} {value!r}")


# --- names ------------------------------------------------------------------------------------------


def _names(doc: dict, out: list[str]) -> None:
    spec = doc["spec"]

    def name(value: Any, where: str) -> None:
        if not (isinstance(value, str) and manifests.DNS_LABEL.fullmatch(value) and len(value) <= manifests.MAX_LABEL):
            out.append(f"{where}: {value!r} is not a DNS-1123 name (at most 63 lower-case letters, digits and '-', "
                       "starting and ending with a letter or digit)")  # fmt: skip

    name(doc["metadata"].get("name"), "metadata.name")
    for i, p in enumerate((spec.get("arguments") or {}).get("parameters") or []):
        name(p.get("name"), f"spec.arguments.parameters[{i}].name")
    for i, v in enumerate(spec.get("volumes") or []):
        name(v.get("name"), f"spec.volumes[{i}].name")
    for i, t in enumerate(spec.get("templates") or []):
        at = f"spec.templates[{i}]"
        name(t.get("name"), f"{at}.name")
        for part in ("inputs", "outputs"):
            for kind in ("parameters", "artifacts"):
                for j, p in enumerate((t.get(part) or {}).get(kind) or []):
                    name(p.get("name"), f"{at}.{part}.{kind}[{j}].name")
        for j, task in enumerate((t.get("dag") or {}).get("tasks") or []):
            name(task.get("name"), f"{at}.dag.tasks[{j}].name")
            for k, p in enumerate((task.get("arguments") or {}).get("parameters") or []):
                name(p.get("name"), f"{at}.dag.tasks[{j}].arguments.parameters[{k}].name")
        for j, mutex in enumerate(((t.get("synchronization") or {}).get("mutexes")) or []):
            name(mutex.get("name"), f"{at}.synchronization.mutexes[{j}].name")
        container = t.get("container") or {}
        for j, env in enumerate(container.get("env") or []):
            if not ENV_NAME.fullmatch(str(env.get("name"))):
                out.append(f"{at}.container.env[{j}].name: {env.get('name')!r} is not an environment variable name")


# --- references -------------------------------------------------------------------------------------


def _references(doc: dict, out: list[str]) -> None:
    spec = doc["spec"]
    templates = {t["name"]: t for t in spec.get("templates") or []}
    workflow_params = {p["name"] for p in (spec.get("arguments") or {}).get("parameters") or []}
    volumes = {v["name"] for v in spec.get("volumes") or []}
    if spec.get("entrypoint") not in templates:
        out.append(f"spec.entrypoint: {spec.get('entrypoint')!r} names no template (templates: {sorted(templates)})")
    for p in (spec.get("arguments") or {}).get("parameters") or []:
        for ref in _refs(p):
            out.append(f"spec.arguments.parameters.{p['name']}: {{{{{ref}}}}}: workflow parameters cannot refer to anything")
    for tname, t in templates.items():
        at = f"spec.templates.{tname}"
        inputs = {p["name"] for p in (t.get("inputs") or {}).get("parameters") or []}
        own = volumes | {v["name"] for v in t.get("volumes") or []}
        for j, mount in enumerate((t.get("container") or {}).get("volumeMounts") or []):
            if mount.get("name") not in own:
                out.append(f"{at}.container.volumeMounts[{j}]: volume {mount.get('name')!r} is not declared (volumes: {sorted(own)})")
        body = {k: v for k, v in t.items() if k != "dag"}
        for ref in _refs(body):
            _local_ref(ref, inputs, workflow_params, f"{at}", out)
        if "dag" in t:
            _dag(t, templates, inputs, workflow_params, at, out)


def _local_ref(ref: str, inputs: set[str], workflow_params: set[str], at: str, out: list[str]) -> None:
    if ref.startswith("="):
        out.append(f"{at}: {{{{{ref}}}}}: expression templates are not checked here (champion does not generate them)")
    elif ref.startswith(WORKFLOW_PARAMETERS):
        if ref.removeprefix(WORKFLOW_PARAMETERS) not in workflow_params:
            out.append(f"{at}: {{{{{ref}}}}}: no such workflow parameter (declared: {sorted(workflow_params)})")
    elif ref.startswith("inputs.parameters."):
        if ref.removeprefix("inputs.parameters.") not in inputs:
            out.append(f"{at}: {{{{{ref}}}}}: the template declares no such input parameter (declared: {sorted(inputs)})")
    elif ref not in GLOBALS and ref not in TEMPLATE_LOCALS:
        out.append(f"{at}: {{{{{ref}}}}}: not a variable this template can use")


def _dag(t: dict, templates: dict[str, dict], inputs: set[str], workflow_params: set[str], at: str, out: list[str]) -> None:
    tasks = {task["name"]: task for task in t["dag"].get("tasks") or []}
    if len(tasks) != len(t["dag"].get("tasks") or []):
        out.append(f"{at}.dag.tasks: task names repeat")
    upstream: dict[str, set[str]] = {}
    for name, task in tasks.items():
        deps, problem = depends_names(task.get("depends"))
        if problem:
            out.append(f"{at}.dag.tasks.{name}.depends: {problem}")
        for dep in deps - tasks.keys():
            out.append(f"{at}.dag.tasks.{name}.depends: {dep!r} is not a task of this DAG (tasks: {sorted(tasks)})")
        upstream[name] = deps & tasks.keys()
    ancestors = _ancestors(upstream, at, out)
    for name, task in tasks.items():
        where = f"{at}.dag.tasks.{name}"
        target = templates.get(task.get("template"))
        if target is None:
            out.append(f"{where}.template: {task.get('template')!r} names no template (templates: {sorted(templates)})")
            continue
        declared = {p["name"]: p for p in (target.get("inputs") or {}).get("parameters") or []}
        given = {p["name"] for p in (task.get("arguments") or {}).get("parameters") or []}
        for extra in sorted(given - declared.keys()):
            out.append(f"{where}.arguments: {extra!r} is not an input parameter of template {target['name']!r}")
        for missing in sorted(k for k, p in declared.items() if k not in given and "value" not in p and "default" not in p):
            out.append(f"{where}.arguments: template {target['name']!r} needs input parameter {missing!r}, not supplied")
        for ref in _refs({k: v for k, v in task.items() if k in ("arguments", "when")}):
            if ref.startswith("tasks."):
                _task_ref(ref, tasks, templates, ancestors.get(name, set()), where, out)
            else:
                _local_ref(ref, inputs, workflow_params, where, out)


def _task_ref(ref: str, tasks: dict[str, dict], templates: dict[str, dict], upstream: set[str], where: str, out: list[str]) -> None:
    match = re.fullmatch(r"tasks\.([^.]+)\.(.+)", ref)
    other, rest = (match.group(1), match.group(2)) if match else (None, ref)
    if other not in tasks:
        out.append(f"{where}: {{{{{ref}}}}}: no task {other!r} in this DAG")
        return
    if other not in upstream:
        out.append(f"{where}: {{{{{ref}}}}}: task {other!r} is not upstream of this task (add it to depends)")
    if rest.startswith("outputs.parameters."):
        param = rest.removeprefix("outputs.parameters.")
        source = templates.get(tasks[other].get("template"))
        if source is None:
            return  # the missing template is reported where the task names it
        declared = {p["name"] for p in (source.get("outputs") or {}).get("parameters") or []}
        if param not in declared:
            out.append(f"{where}: {{{{{ref}}}}}: template {source.get('name')!r} declares no output parameter {param!r} "
                       f"(outputs: {sorted(declared)})")  # fmt: skip
    elif rest not in TASK_FIELDS:
        out.append(f"{where}: {{{{{ref}}}}}: not a task variable")


def depends_names(depends: str | None) -> tuple[set[str], str | None]:
    """The task names in a `depends` expression, and a problem with its syntax (or None).

    The syntax: task names or `task.Result` terms, joined by `&&` or `||`, with `!` and parentheses.
    """
    if not depends:
        return set(), None
    names: set[str] = set()
    for token in re.split(r"\s*(?:&&|\|\||[()!])\s*", depends.strip()):
        if not token:
            continue
        name, _, result = token.partition(".")
        if result and result not in RESULTS:
            return names, f"{token!r}: {result!r} is not a task result ({sorted(RESULTS)})"
        if not re.fullmatch(r"[A-Za-z0-9-]+", name):
            return names, f"{token!r} is not a task name"
        names.add(name)
    return names, None


def _ancestors(upstream: dict[str, set[str]], at: str, out: list[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}

    def visit(name: str, path: tuple[str, ...]) -> set[str]:
        if name in path:
            out.append(f"{at}.dag: dependency cycle {' -> '.join((*path[path.index(name):], name))}")
            return set()
        if name not in found:
            found[name] = set()
            for dep in upstream.get(name, set()):
                found[name] |= {dep} | visit(dep, (*path, name))
        return found[name]

    for name in upstream:
        visit(name, ())
    return found


def _refs(value: Any) -> list[str]:
    """Every `{{ … }}` reference inside the strings of `value`, stripped."""
    if isinstance(value, str):
        return [r.strip() for r in REFERENCE.findall(value)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []
