"""Progress display on stderr (stdout carries the KEY=value lines), silenced by --quiet."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


@contextlib.contextmanager
def data_progress(quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A callback (description, done, total) that drives one bar per description."""
    if quiet:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bars:  # fmt: skip
        tasks: dict[str, int] = {}

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bars.add_task(what, total=total)
            bars.update(tasks[what], completed=done)

        yield report


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(message)
