"""Write constraints.txt: the installed version of each direct dependency in pyproject.toml (and of the
grpc extra, which the image installs), pinned with ==.

The Dockerfile installs with `pip install -c constraints.txt`, so the image gets the versions the
test suite passed with here rather than whatever is newest on the day it is built.

    .venv/bin/python scripts/lock_deps.py            # rewrite constraints.txt from .venv
    .venv/bin/python scripts/lock_deps.py --check    # exit 1 if constraints.txt differs from .venv

Run it with the project's environment (it reads the versions installed there). A dependency that is
not installed, or whose installed version is outside pyproject.toml's range, is an error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "constraints.txt"
IMAGE_EXTRA = "grpc"  # the extra the Dockerfile installs: its dependencies are pinned as well
HEADER = """\
# The versions of champion's direct dependencies ([project].dependencies in pyproject.toml, and the grpc
# extra's) that the test suite passed with. The Dockerfile installs with `pip install -c constraints.txt`.
# Written by scripts/lock_deps.py from the installed environment; do not edit by hand.
"""


def pins(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """`name==version` for every direct dependency, from the installed distributions."""
    project = tomllib.loads(pyproject.read_text())["project"]
    dependencies = project["dependencies"] + project["optional-dependencies"][IMAGE_EXTRA]
    lines = []
    for text in dependencies:
        req = Requirement(text)
        try:
            # The public version: a local label such as +cpu names the wheel's build, not a release.
            version = Version(importlib.metadata.version(req.name)).public
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f"{req.name} is not installed in {sys.prefix}: install the project first (pip install -e .)")
        if not req.specifier.contains(version, prereleases=True):
            sys.exit(f"{req.name} {version} is installed, but pyproject.toml asks for {req.specifier}: reinstall")
        lines.append(f"{canonicalize_name(req.name)}=={version}")
    return sorted(lines)


def render() -> str:
    return HEADER + "\n".join(pins()) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if constraints.txt is not what would be written")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            sys.exit(f"{OUTPUT.name} differs from the installed versions: run scripts/lock_deps.py")
        print(f"{OUTPUT.name} is up to date")
        return
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.name} ({text.count('==')} pins)")


if __name__ == "__main__":
    main()
