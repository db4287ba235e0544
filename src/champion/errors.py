"""Errors that reach the user, each with the exit code the CLI returns for it.

Exit codes (the contract with scripts and orchestrators):
    0  success
    1  error (the step could not do its work: missing data, registry unreachable, export failed)
    2  usage or configuration error (nothing was started)
    3  rejected by Quality Gate 1 (the candidate did not beat the champion: an answer, not a crash)
    4  rejected by Quality Gate 2 (the exported model is not numerically faithful)
  130  interrupted (Ctrl-C or SIGTERM); the training run is marked KILLED and can be resumed
   75  workflow mode only (CHAMPION_WORKFLOW_MODE=1): a server could not be reached, retrying may
        succeed (EX_TEMPFAIL); outside workflow mode the same failure exits 1. In workflow mode
        rejections (3, 4) exit 0: see champion.workflow.mode

The one exception: `champion serve` exits 0 on SIGTERM or Ctrl-C, after it has stopped accepting
connections and answered the requests in flight; for a server, being stopped is its normal end.
"""

from __future__ import annotations

from collections.abc import Iterator

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATE1_REJECTED = 3
EXIT_GATE2_REJECTED = 4
EXIT_UNREADABLE = 5  # predict, evaluate: every row was written, but some files could not be read
EXIT_BELOW_FAIL_UNDER = 6  # evaluate: accuracy under --fail-under (drift), the report written
EXIT_TRANSIENT = 75  # workflow mode: the retryStrategy retries exactly this code


class ChampionError(Exception):
    """A failure with a message that names the problem and the fix."""

    exit_code = EXIT_ERROR


class ConfigError(ChampionError):
    """Bad configuration or usage, found before any work started."""

    exit_code = EXIT_USAGE


class DataError(ChampionError):
    """The data source is missing, empty or holds unreadable files."""


class RegistryError(ChampionError):
    """The MLflow tracking server or model registry could not be reached or answered an error."""


class ExportError(ChampionError):
    """Export to ONNX or TorchScript failed."""


class IntegrityError(ChampionError):
    """A stored artefact is not the one recorded (its content hash differs): an error, never a gate's answer."""


class DiskFullError(ChampionError, OSError):
    """A write found no room (ENOSPC, or EDQUOT: a quota spent); the message names the folder and the file.

    Also an OSError, so that code telling the machine's failures (disk, memory) from the model's still does.
    """


class Interrupted(ChampionError):
    """Ctrl-C or SIGTERM stopped the work; what was saved is said in the message."""

    exit_code = 130


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it was raised from or while handling (causes and contexts), each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
