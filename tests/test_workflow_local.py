"""The local executor's Argo semantics, on tiny WorkflowTemplates whose containers run `python -c`:
depends and when (Skipped, Omitted), output parameters and their defaults, retries by exit code,
fail-fast, fresh emptyDir per try, claims mapped to folders, secrets, and refusal of the rest."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest

from champion.workflow import local, spec

PATH = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def container(name: str, code: str, inputs: tuple[str, ...] = (), outputs: dict[str, str | None] | None = None, **extra) -> dict:
    """A container template running `python -c code`; its outputs are files under /work/out."""
    t = {
        "name": name,
        "container": {
            "image": "python:3.11", "command": ["python", "-c", code], "args": [f"{{{{inputs.parameters.{i}}}}}" for i in inputs],
            "volumeMounts": [{"name": "scratch", "mountPath": "/work"}], **extra.pop("container", {}),
        },
        **extra,
    }  # fmt: skip
    if inputs:
        t["inputs"] = {"parameters": [{"name": i} for i in inputs]}
    if outputs:
        t["outputs"] = {"parameters": [
            {"name": k, "valueFrom": {"path": f"/work/out/{k}", **({"default": d} if d is not None else {})}} for k, d in outputs.items()
        ]}  # fmt: skip
    return t


def template(templates: list[dict], tasks: list[dict], **spec_extra) -> dict:
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "tiny"},
        "spec": {"entrypoint": "main", "volumes": [{"name": "scratch", "emptyDir": {}}], "templates": [*templates, {"name": "main", "dag": {"tasks": tasks}}], **spec_extra},
    }  # fmt: skip


# Writes its argv[1:] as outputs NAME=VALUE into /work/out (the args are container paths, mapped).
WRITE = "import sys, pathlib; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True); [(d / a.split('=')[0]).write_text(a.split('=', 1)[1]) for a in sys.argv[2:]]"


def gate_doc() -> dict:
    """decide -> (use when passed) -> after; decide -> report (always)."""
    decide = container("decide", WRITE, inputs=("verdict",), outputs={"result": None, "version": "none"})
    decide["container"]["args"] = ["/work/out", "result={{inputs.parameters.verdict}}"]
    use = container("use", WRITE, inputs=("version",), outputs={"used": None})
    use["container"]["args"] = ["/work/out", "used={{inputs.parameters.version}}"]
    after = container("after", WRITE, inputs=("used",), outputs={"done": None})
    after["container"]["args"] = ["/work/out", "done={{inputs.parameters.used}}"]
    report = container("report", "print('report')")
    return template(
        [decide, use, after, report],
        [
            {"name": "decide", "template": "decide", "arguments": {"parameters": [{"name": "verdict", "value": "{{workflow.parameters.verdict}}"}]}},
            {"name": "use", "template": "use", "depends": "decide", "when": '"{{tasks.decide.outputs.parameters.result}}" == "passed"',
             "arguments": {"parameters": [{"name": "version", "value": "{{tasks.decide.outputs.parameters.version}}"}]}},
            {"name": "after", "template": "after", "depends": "use", "when": '"{{tasks.use.outputs.parameters.used}}" == "none"',
             "arguments": {"parameters": [{"name": "used", "value": "{{tasks.use.outputs.parameters.used}}"}]}},
            {"name": "report", "template": "report", "depends": "decide"},
        ],
        arguments={"parameters": [{"name": "verdict", "value": "passed"}]},
    )  # fmt: skip


def test_gate_doc_is_valid_argo() -> None:
    assert spec.problems(gate_doc()) == []


def test_outputs_flow_and_defaults_fill_what_was_not_written(tmp_path: Path) -> None:
    run = local.run(gate_doc(), tmp_path, env=PATH, quiet=True)
    assert run.phase == "Succeeded"
    assert {k: t.phase for k, t in run.tasks.items()} == {"decide": "Succeeded", "use": "Succeeded", "after": "Succeeded", "report": "Succeeded"}
    assert run.tasks["decide"].outputs == {"result": "passed", "version": "none"}  # `version` was never written: its default
    assert run.tasks["after"].outputs == {"done": "none"}
    assert run.tasks["decide"].command[-1] == "result=passed"  # the container's view: parameters substituted, paths unmapped
    assert run.tasks["decide"].command[-2] == "/work/out"


def test_a_false_when_skips_and_references_to_a_skipped_task_stay_unresolved(tmp_path: Path) -> None:
    run = local.run(gate_doc(), tmp_path, parameters={"verdict": "failed"}, env=PATH, quiet=True)
    # `use` is Skipped; `after` depends on it (a skipped task satisfies a bare depends), and its
    # quoted when compares the reference, left unresolved as Argo leaves it, with "none": false.
    assert {k: t.phase for k, t in run.tasks.items()} == {"decide": "Succeeded", "use": "Skipped", "after": "Skipped", "report": "Succeeded"}
    assert run.phase == "Succeeded"
    assert run.tasks["use"].message == """when '"failed" == "passed"' evaluated false"""
    assert run.tasks["after"].message == """when '"{{tasks.use.outputs.parameters.used}}" == "none"' evaluated false"""
    assert not (tmp_path / "use").exists() and not (tmp_path / "after").exists()  # nothing ran for them


def test_an_unresolved_reference_in_a_task_that_runs_is_an_error(tmp_path: Path) -> None:
    doc = gate_doc()
    tasks = doc["spec"]["templates"][-1]["dag"]["tasks"]
    tasks[2]["when"] = '"{{tasks.decide.outputs.parameters.result}}" == "failed"'
    tasks[2]["depends"] = "use && decide"
    run = local.run(doc, tmp_path, parameters={"verdict": "failed"}, env=PATH, quiet=True)
    assert run.tasks["after"].phase == "Error" and "failed to resolve {{tasks.use.outputs.parameters.used}}" in run.tasks["after"].message
    assert run.phase == "Failed"
    # Unquoted, a reference left unresolved makes the condition itself invalid: an Error, not a skip.
    tasks[2]["when"] = "{{tasks.use.outputs.parameters.used}} == none"
    run = local.run(doc, tmp_path / "unquoted", parameters={"verdict": "failed"}, env=PATH, quiet=True)
    assert run.tasks["after"].phase == "Error" and "invalid when expression" in run.tasks["after"].message


def test_depends_on_a_result_omits_and_a_failure_stops_the_dag(tmp_path: Path) -> None:
    crash = container("crash", "import sys; print('boom', file=sys.stderr); sys.exit(3)")
    ok = container("ok", "pass")
    doc = template([crash, ok], [
        {"name": "first", "template": "ok"},
        {"name": "on-success", "template": "ok", "depends": "first.Failed"},
        {"name": "crash", "template": "crash", "depends": "first"},
        {"name": "later", "template": "ok", "depends": "first"},
    ])  # fmt: skip
    run = local.run(doc, tmp_path, env=PATH, quiet=True)
    assert [(k, t.phase) for k, t in run.tasks.items()] == [("first", "Succeeded"), ("on-success", "Omitted"), ("crash", "Failed")]
    assert run.tasks["crash"].exit_code == 3 and run.tasks["crash"].attempts == 1
    assert "boom" in (tmp_path / "crash" / "try-1" / "stderr").read_text()
    assert run.phase == "Failed"  # and `later` never started: Argo's DAG fails fast


def test_retries_only_the_exit_code_the_expression_names_each_try_in_a_fresh_emptydir(tmp_path: Path) -> None:
    # Exits 75 while /work is empty (a fresh emptyDir each try), after leaving a file there; counts tries in the claim.
    code = ("import sys, pathlib; w = pathlib.Path(sys.argv[1]); fresh = not any(w.iterdir()); "
            "(w / 'x').write_text('x'); c = pathlib.Path(sys.argv[2]) / 'tries'; n = int(c.read_text()) + 1 if c.exists() else 1; "
            "c.write_text(str(n)); sys.exit(int(sys.argv[3]) if fresh else 9)")  # fmt: skip
    flaky = container("flaky", code, inputs=("code",), retryStrategy={"limit": 2, "retryPolicy": "OnFailure", "expression": "asInt(lastRetry.exitCode) == 75"})
    flaky["container"]["args"] = ["/work", "/state", "{{inputs.parameters.code}}"]
    flaky["container"]["volumeMounts"].append({"name": "state", "mountPath": "/state"})
    doc = template([flaky], [{"name": "flaky", "template": "flaky", "arguments": {"parameters": [{"name": "code", "value": "{{workflow.parameters.code}}"}]}}],
                   arguments={"parameters": [{"name": "code", "value": "75"}]})  # fmt: skip
    doc["spec"]["volumes"].append({"name": "state", "persistentVolumeClaim": {"claimName": "state"}})
    assert spec.problems(doc) == []
    run = local.run(doc, tmp_path / "a", claims={"state": tmp_path / "state-a"}, env=PATH, quiet=True)
    assert run.tasks["flaky"].attempts == 3 and run.tasks["flaky"].exit_code == 75 and run.phase == "Failed"
    assert (tmp_path / "state-a" / "tries").read_text() == "3"  # every try found its emptyDir empty
    run = local.run(doc, tmp_path / "b", parameters={"code": "1"}, claims={"state": tmp_path / "state-b"}, env=PATH, quiet=True)
    assert run.tasks["flaky"].attempts == 1 and run.tasks["flaky"].exit_code == 1  # 1 is not retried
    with pytest.raises(local.ConfigError, match="--volume state=DIR"):
        local.run(doc, tmp_path / "c", env=PATH, quiet=True)


def test_secrets_by_reference(tmp_path: Path) -> None:
    show = container("show", "import os; print(os.environ.get('TOKEN'), os.environ.get('OPTIONAL', 'unset'), os.environ.get('HOSTILE', 'unset'))")
    show["container"]["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "other", "optional": True}}},
    ]
    doc = template([show], [{"name": "show", "template": "show"}])
    os.environ["HOSTILE"] = "leaked"  # not in the template's env: a container would not see it
    try:
        run = local.run(doc, tmp_path / "a", secrets={"creds": {"token": "s3cret"}}, env=PATH, quiet=True)
    finally:
        del os.environ["HOSTILE"]
    assert run.phase == "Succeeded"
    assert (tmp_path / "a" / "show" / "try-1" / "stdout").read_text().split() == ["s3cret", "unset", "unset"]
    run = local.run(doc, tmp_path / "b", secrets={}, env=PATH, quiet=True)
    assert run.tasks["show"].phase == "Error" and "secret 'creds' has no key 'token'" in run.tasks["show"].message


def test_a_missing_output_without_default_is_an_error(tmp_path: Path) -> None:
    silent = container("silent", "pass", outputs={"result": None})
    run = local.run(template([silent], [{"name": "silent", "template": "silent"}]), tmp_path, env=PATH, quiet=True)
    assert run.tasks["silent"].phase == "Error" and "was not written and has no default" in run.tasks["silent"].message
    assert run.phase == "Failed"


def test_outside_the_subset_is_refused_with_every_place_named(tmp_path: Path) -> None:
    doc = gate_doc()
    t = doc["spec"]["templates"]
    t[0]["container"]["workingDir"] = "/work"
    t[1]["activeDeadlineSeconds"] = 60
    t[-1]["dag"]["tasks"][1]["withItems"] = ["a"]
    t[-1]["dag"]["tasks"][2]["when"] = '"a" == "a" && "b" == "b"'
    t[3]["retryStrategy"] = {"limit": 1, "expression": "lastRetry.status == 'Error'"}
    doc["spec"]["serviceAccountName"] = "runner"
    assert spec.problems(doc) == []  # all valid Argo
    with pytest.raises(local.Unsupported) as refused:
        local.run(doc, tmp_path, env=PATH, quiet=True)
    for place in ("spec.templates.decide.container.workingDir", "spec.templates.use.activeDeadlineSeconds",
                  "spec.templates.main.dag.tasks.use.withItems", "spec.templates.main.dag.tasks.after.when",
                  "spec.templates.report.retryStrategy.expression", "spec.serviceAccountName"):  # fmt: skip
        assert place in str(refused.value), place
    assert not any(tmp_path.iterdir())
    script = copy.deepcopy(gate_doc())
    script["spec"]["templates"][3] = {"name": "report", "script": {"image": "python:3.11", "command": ["python"], "source": "print(1)"}}
    with pytest.raises(local.Unsupported, match="only container and DAG templates"):
        local.run(script, tmp_path, env=PATH, quiet=True)
    with pytest.raises(spec.SpecError, match="DNS-1123"):
        bad = gate_doc()
        bad["spec"]["templates"][3]["name"] = "re_port"
        local.run(bad, tmp_path, env=PATH, quiet=True)
    with pytest.raises(local.ConfigError, match="no parameter 'verdit'"):
        local.run(gate_doc(), tmp_path, parameters={"verdit": "x"}, env=PATH, quiet=True)
