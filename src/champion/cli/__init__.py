"""The `champion` command: a thin table of subcommands over the library's stage functions.

Step commands print `KEY=value` lines on stdout (progress goes to stderr) and, with
`--output-files DIR`, also write each value to `DIR/KEY` for an orchestrator. Heavy libraries are
imported inside the commands so that `champion --help` stays fast.

The commands live in one module per group (steps, data, inference: predict and evaluate, models, deploy,
workflow, and about: --version and config); importing this package registers them all on `app`, in the order --help lists them.
"""

from __future__ import annotations

import signal

# Imported for their side effect: each module registers its commands on `app` (this order is --help's).
from champion.cli import steps, data, inference, models, deploy, workflow, about  # noqa: F401
from champion.cli.common import OUTPUT_KEYS, _guard, _resolve_config, app, guarded  # noqa: F401 - what callers import from champion.cli


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (Kubernetes, Argo, kill) takes the same path as Ctrl-C: runs are closed, not left RUNNING.
    raise KeyboardInterrupt


def main() -> None:
    """The console script: run `app`, with SIGTERM handled as Ctrl-C."""
    signal.signal(signal.SIGTERM, _terminate)
    app()
