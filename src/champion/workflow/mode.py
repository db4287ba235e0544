"""Workflow mode: how the step commands tell an orchestrator a rejection from a crash.

Outside a workflow a gate rejection has its own exit code (3, 4), so that a shell script stops.
In a workflow a rejection is a normal outcome: the step succeeds with `RESULT=failed` and the
workflow's `when` conditions skip what follows, while a crash (any other non-zero code) fails the
step and the workflow. `CHAMPION_WORKFLOW_MODE=1` switches this on; the generated WorkflowTemplate
sets it on every step.

In workflow mode a failure that retrying may cure (a server that could not be reached) exits with
`EXIT_TRANSIENT` (75, `EX_TEMPFAIL` of sysexits.h) instead of 1, so that the template's
retryStrategy retries exactly those failures and never a rejection or bad data.

The names cannot collide with the configuration's `CHAMPION_<SECTION>__<KEY>` variables: they
hold no double underscore.
"""

from __future__ import annotations

import os
import sys

from champion.errors import EXIT_GATE1_REJECTED, EXIT_GATE2_REJECTED, EXIT_OK, EXIT_TRANSIENT, ConfigError, chain
from champion import names

# requests and botocore are imported inside `_network_errors`, each only if installed: both are optional
# here, and every command (`champion --help` too) imports this module.

MODE_ENV = "CHAMPION_WORKFLOW_MODE"
# Names one workflow step across its retries (the template sets `<workflow uid>-train`): the
# training run carries it as the tag STEP_TAG, so a retried train finds what the earlier try left.
STEP_ENV = "CHAMPION_WORKFLOW_STEP_ID"
STEP_TAG = names.WORKFLOW_STEP_ID

_ON = {"1", "true", "yes", "on"}
_OFF = {"", "0", "false", "no", "off"}


def active() -> bool:
    """Whether CHAMPION_WORKFLOW_MODE is on.

    Raises:
        ConfigError: the variable holds something other than a yes/no word (a typo must not
            silently turn rejections back into failed steps).
    """
    value = os.environ.get(MODE_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(f"{MODE_ENV}={os.environ[MODE_ENV]!r}: expected 1 (workflow mode) or 0; unset it outside a workflow")


def step_id() -> str | None:
    """The workflow step this process runs (CHAMPION_WORKFLOW_STEP_ID), or None outside a workflow."""
    value = os.environ.get(STEP_ENV, "").strip()
    return value or None


def success_code(code: int, workflow: bool) -> int:
    """The exit code of a command that ran to its end: in workflow mode a gate rejection exits 0."""
    if workflow and code in (EXIT_GATE1_REJECTED, EXIT_GATE2_REJECTED):
        print(f"workflow mode ({MODE_ENV}): the rejection is this step's answer (RESULT=failed); exit 0 instead of {code}",
              file=sys.stderr, flush=True)  # fmt: skip
        return EXIT_OK
    return code


def failure_code(exc: BaseException, code: int, workflow: bool) -> int:
    """The exit code of a command that failed with `exc`: in workflow mode a transient failure exits 75."""
    if workflow and is_transient(exc):
        print(f"workflow mode ({MODE_ENV}): a server could not be reached; exit {EXIT_TRANSIENT} so that the workflow "
              "retries this step", file=sys.stderr, flush=True)  # fmt: skip
        return EXIT_TRANSIENT
    return code


def is_transient(exc: BaseException) -> bool:
    """Whether `exc`, or any exception it was raised from or while handling, is a failure to reach a
    server: refused or reset connections, timeouts, retries exhausted on 429/5xx answers.

    An answer the server gave (404, 403, a bad request) is not transient, nor is anything about the
    data or the model: retrying those would give the same answer.
    """
    network = _network_errors()
    return any(isinstance(e, network) for e in chain(exc))


def _network_errors() -> tuple[type[BaseException], ...]:
    # Builtin ConnectionError covers refused and reset sockets; requests' (a different class) is
    # what MLflow's REST client raises, wrapped in an MlflowException that keeps it as __context__.
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import requests  # lazy and optional: see the note at the imports

        found += [requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError]
    except ImportError:  # requests comes with MLflow; without it there is no REST client to fail
        pass
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError

        found.append(BotoConnectionError)  # S3 artefact stores: EndpointConnectionError, timeouts
    except ImportError:  # botocore is optional: only S3 stores need it
        pass
    return tuple(found)
