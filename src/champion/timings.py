"""Where a command's time goes: named stages with their wall-clock span and CPU time.

Stages are recorded as they run (`with stage("ingest"): ...`, or `record` for spans measured
elsewhere, such as training epochs) and cost two clock reads each. Nothing is written unless the
environment names a file in `CHAMPION_TIMINGS`: then the stages are written there as JSON when the
command ends, with absolute wall-clock times, so that a benchmark that started the process can
also count what came before the first stage (interpreter start-up and imports).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from champion.files import atomic_write

F = TypeVar("F", bound=Callable[..., Any])

ENV = "CHAMPION_TIMINGS"

_stages: list[dict[str, float | str]] = []


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Record the wall-clock span and this process's CPU time of the block as stage `name`."""
    start, cpu = time.time(), time.process_time()
    try:
        yield
    finally:
        record(name, start, time.time(), time.process_time() - cpu)


def timed(name: str) -> Callable[[F], F]:
    """Decorator: every call of the function is recorded as stage `name`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with stage(name):
                return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap


def record(name: str, start: float, end: float, cpu: float | None = None, beside: bool = False) -> None:
    """Record a stage measured by the caller (`start`/`end` from `time.time()`, `cpu` in seconds).

    `beside`: it ran in another process at the same time as this one's stages (`champion.forked`).
    """
    extra = ({"cpu": cpu} if cpu is not None else {}) | ({"beside": True} if beside else {})
    _stages.append({"stage": name, "start": start, "end": end, **extra})


def stages() -> list[dict[str, float | str]]:
    return list(_stages)


def reset() -> None:
    """Forget the stages recorded so far: a command starts its own list (tests run several in one process)."""
    _stages.clear()


def write_if_asked() -> Path | None:
    """Write the stages recorded so far to the file `CHAMPION_TIMINGS` names, if it names one."""
    target = os.environ.get(ENV)
    if not target:
        return None

    path = Path(target)
    # The process's CPU time so far (all threads): what the stages do not account for is visible.
    report = {"pid": os.getpid(), "written_at": time.time(), "process_cpu": time.process_time(), "stages": _stages}
    try:
        atomic_write(path, json.dumps(report, indent=1))
    except OSError as exc:  # a benchmark's side file: it must not replace the command's own result or error
        print(f"warning: could not write the stage timings to {ENV}={target}: {exc}", file=sys.stderr)
        return None
    return path
