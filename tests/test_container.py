"""The container image, as far as it can be checked without a Docker engine.

The Dockerfile is parsed: its entry point is the `champion` console script pyproject.toml declares,
it runs as a numeric non-root user, it installs the project the way the README does (`pip install .`)
with every direct dependency pinned by constraints.txt, torch from the CPU wheel index by default,
and the tag it documents is the image the Argo workflow runs by default. .dockerignore is applied
with Docker's matching rules: the build context holds what the Dockerfile copies and none of the
virtual environment, MLflow store, outputs or git history.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with comments dropped and `\\` continuations joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction is skipped by Docker
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


STEPS = instructions(DOCKERFILE.read_text())


def only(keyword: str) -> list[str]:
    return [args for kw, args in STEPS if kw == keyword]


def arg_default(name: str) -> str:
    for args in only("ARG"):
        key, _, value = args.partition("=")
        if key == name:
            return value
    raise AssertionError(f"no ARG {name}")


def pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` in RUN instructions (the words after `install`, up to `&&`)."""
    found = []
    for run in only("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                found.append(words[2:])
    return found


def targets(words: list[str]) -> list[str]:
    """What `pip install` installs: the words that are not options (nor an option's value)."""
    takes_value = {"-c", "--constraint", "-r", "--requirement", "--index-url", "-i", "--extra-index-url"}
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif not word.startswith("-"):
            out.append(word)
    return out


def test_entry_point_is_the_champion_console_script() -> None:
    (entry,) = only("ENTRYPOINT")
    command = json.loads(entry)  # the exec form: signals reach champion itself, not a shell
    assert command == ["champion"]
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["champion"] == "champion.cli:main"
    (installed,) = [ep for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "champion"]
    assert installed.value == "champion.cli:main" and callable(installed.load())


def test_runs_as_a_numeric_non_root_user() -> None:
    users = only("USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    # Kubernetes can check runAsNonRoot only against a numeric user.
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), users[-1]
    created = [run for run in only("RUN") if "useradd" in run]
    assert created and f"--uid {uid}" in created[0], "the USER's uid is not the one useradd creates"
    # The entry point runs after the switch: nothing after USER runs as root.
    keywords = [kw for kw, _ in STEPS]
    assert keywords.index("ENTRYPOINT") > len(keywords) - 1 - keywords[::-1].index("USER")


def test_installs_the_project_as_the_readme_does_with_pinned_dependencies() -> None:
    readme = (ROOT / "README.md").read_text()
    readme_install = re.search(r"pip install (-e )?(\S+)", readme)
    assert readme_install, "README has no pip install of the project"
    project = readme_install.group(2)  # `.`: the checkout
    installs = pip_installs()
    project_installs = [words for words in installs if project in [t.strip("\"'").split("[")[0] for t in targets(words)]]
    assert len(project_installs) == 1, installs
    words = project_installs[0]
    # The project itself, as in the README (not editable: no source in the image), with the grpc extra
    # so that the image serves gRPC too.
    assert [t.strip("\"'") for t in targets(words)] == [f"{project}[grpc]"]
    for words in installs:  # every install is held to the pins
        assert words[words.index("-c") + 1] == "constraints.txt", words
    copied = " ".join(only("COPY")).split()
    assert "constraints.txt" in copied and "pyproject.toml" in copied and "src" in copied


def test_torch_comes_from_the_cpu_wheels_unless_built_for_cuda() -> None:
    assert arg_default("TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    base = arg_default("BASE")
    assert only("FROM") == ["${BASE}"]
    python = re.fullmatch(r"python:(\d+\.\d+)-slim", base)
    assert python and SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python.group(1) + ".0")
    (torch,) = [words for words in pip_installs() if "torch" in targets(words)]
    assert targets(torch) == ["torch", "torchvision"]
    assert torch[torch.index("--index-url") + 1] == "$TORCH_INDEX"
    # The CUDA build is documented with both build arguments.
    header = DOCKERFILE.read_text()
    assert re.search(r"--build-arg BASE=nvidia/cuda:\S+-runtime\S*", header)
    assert re.search(r"--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu\d+", header)


def test_every_direct_dependency_is_pinned() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    for text in PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["grpc"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} has no == line in constraints.txt: run scripts/lock_deps.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"


def test_the_documented_tag_is_the_workflows_default_image() -> None:
    from champion.workflow.argo import DEFAULT_IMAGE as image

    assert image == f"champion:{PYPROJECT['project']['version']}"
    for page in (DOCKERFILE, ROOT / "docs" / "deploy.md"):
        tags = re.findall(r"docker build -t (\S+) \.", page.read_text())
        assert tags and all(tag == image for tag in tags), (page.name, tags)


# --- .dockerignore, with Docker's rules ------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` stop at `/`, `**` crosses folders (Go's filepath.Match plus `**`)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `path` out of the build context: the last rule matching it or a parent folder wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for exclude, rx in rules:
        if any(rx.fullmatch(c) for c in candidates):
            result = exclude
    return result


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((not negate, _pattern(line.lstrip("!").strip("/").removeprefix("./"))))
    return rules


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".venv", "mlflow.db", "mlruns/0/meta.yaml", "mlartifacts/1/a", "outputs/digits-cnn/model_card/model_card.md",
     "checkpoints/abc/last.ckpt", "triton-models/digits-cnn/1/model.onnx", ".git/HEAD", ".pytest_cache/v/x",
     "src/champion/__pycache__/cli.cpython-311.pyc", "src/champion.egg-info/PKG-INFO", "tests/test_container.py", "data/mnist/x.png"],
)  # fmt: skip
def test_dockerignore_keeps_out(path: str) -> None:
    assert ignored(path, dockerignore_rules()), f"{path} would be sent to the Docker daemon"


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    rules = dockerignore_rules()
    for args in only("COPY"):
        *sources, _dest = args.split()
        for source in sources:
            root = ROOT / source
            # Build leftovers in a checkout (byte code, setuptools' egg-info) are meant to stay out.
            leftovers = lambda p: any(part == "__pycache__" or part.endswith(".egg-info") for part in p.parts)  # noqa: E731
            files = [p for p in root.rglob("*") if p.is_file() and not leftovers(p)] if root.is_dir() else [root]
            assert files, source
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                assert not ignored(rel, rules), f"COPY {source}: {rel} is left out of the build context"
    assert not ignored("src/champion/cli/__init__.py", rules) and not ignored("README.md", rules)


def build_context(dest: Path) -> Path:
    """Copy what Docker would send as the build context (the checkout filtered by .dockerignore) into `dest`."""
    rules = dockerignore_rules()
    for folder, dirs, files in os.walk(ROOT):
        rel_folder = Path(folder).relative_to(ROOT)
        # An ignored folder is not walked: nothing in this .dockerignore lets a file back in below one.
        dirs[:] = [d for d in dirs if not ignored((rel_folder / d).as_posix(), rules)]
        for name in files:
            rel = (rel_folder / name).as_posix()
            if not ignored(rel, rules):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dest / rel)
    return dest


def test_the_build_context_alone_builds_the_package(tmp_path: Path) -> None:
    """What the Dockerfile's `pip install .` builds from: the context holds all the package needs, and the CLI."""
    context = build_context(tmp_path / "context")
    assert sorted(p.name for p in context.iterdir()) == ["README.md", "configs", "constraints.txt", "pyproject.toml", "src"]
    out = tmp_path / "wheel"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("champion-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {"champion/cli/__init__.py", "champion/py.typed", "champion/deploy/kserve.py"} <= names
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "champion = champion.cli:main" in zf.read(entry_points).decode()
