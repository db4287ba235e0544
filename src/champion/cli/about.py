"""`champion --version` and `champion config`: which champion, and which configuration a command would run with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from champion.cli.common import ConfigOpt, SetOpt, _config_epilog, app, guarded
from champion.config import annotated_yaml, resolve
from champion.registry import tracking


def version() -> str:
    """The installed distribution's version (what a bug report needs); the package's own when not installed."""
    from importlib import metadata

    try:
        return metadata.version("champion")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from champion import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        print(f"champion {version()}")
        raise typer.Exit()


@app.callback()
def options(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print champion's version and exit."
    ),
) -> None:
    # Every command names its tracking store once: a new command, in this process too (tests, a notebook).
    tracking.forget_announced()


@app.command("config", epilog=_config_epilog())
@guarded
def config(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt) -> int:
    """Print the resolved configuration as YAML, each value marked with what set it; itself a config file.

    Resolved as `champion run` resolves it: built-in defaults, the --config file, CHAMPION_<SECTION>__<KEY>
    variables, then --set. Save it (`champion config > my.yaml`), edit it, and run it with `champion run
    --config my.yaml`.
    """
    print(annotated_yaml(resolve(config, set_, env=os.environ)), end="")
    return 0
