"""Release: the one way a gate that passed changes the registry.

Every gate ends the same way when its candidate passes: under the model's lease, ask the server who
acts (before anything changes, so a server that cannot say fails the step with the registry as it
was), register the version, then move an alias through `history.move_alias`, which records the
event. Quality Gate 1 moves `champion` on `<name>`; Quality Gate 2 and the int8 gate move `deploy`
on `<name>-onnx` and `<name>-onnx-int8`, and only while the version they exported from still holds
`champion` (`deploy_skipped`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from champion import names
from champion.progress import say
from champion.registry import history, storage, tracking
from champion.registry import lease as leases
from champion.registry.exports import ExportRecord


@dataclass(frozen=True)
class Release:
    """One gate's pass: what to register where, and the alias move that records it."""

    model: str  # whose lease, history and policy
    registered: str  # the registered model that gets the version (`model`, `<model>-onnx`, `<model>-onnx-int8`)
    model_uri: str
    run_id: str  # the run the version is registered for
    tags: dict[str, str]
    alias: str
    reason: str  # the event's reason (`gate1 passed`, `gate2 passed`, `int8 gate passed`)
    report: tuple[str, str]  # (run id, artefact path) of the gate report that decided
    details: dict[str, Any] = field(default_factory=dict)  # more fields for the event


def register(release: Release) -> str:
    """Register `release`'s version (by reference: nothing is copied), after asking who acts; its version."""
    history.actor(f"registering {release.registered!r}")  # a server that cannot say who fails here, before the registry changes
    with tracking.registry_errors(f"register {release.registered!r}"):
        mv = storage.register(release.registered, release.model_uri, release.run_id, release.tags)
    return str(mv.version)


def move(release: Release, version: str, held: leases.Lease, alias: str | None = None) -> history.Moved:
    """Move `release`'s alias (or `alias`) of its registered model to `version`, recording the event."""
    registered = None if release.registered == release.model else release.registered
    return history.move_alias(
        release.model, alias or release.alias, version, release.reason, lease=held, registered_model=registered,
        report=release.report, **release.details,
    )  # fmt: skip


def deploy_skipped(record: ExportRecord) -> str | None:
    """Under the model's lease: why `deploy` must not move to a model exported from `record`'s version
    (`skipped: …`, that version is no longer @champion), or None. A rollback export always moves it."""
    name = record.parent_model_name
    current = tracking.champion_number(tracking.registered_model(name, f"look up the champion of {name!r}"))
    if record.export_reason != "champion" or current == str(record.parent_model_version):
        return None
    return f"skipped: v{record.parent_model_version} is no longer @champion (v{current or 'none'} is)"


def release_for_deploy(release: Release, record: ExportRecord, *, skip_tag: str, gate: str, purpose: str, quiet: bool) -> str:
    """Register a validated export and move `deploy` to it, both under the parent model's lease.

    A `champion` export moves `deploy` only while its version still holds @champion: of two exports
    validated at once, or one validated late, @deploy ends on the current champion's. A `rollback`
    export always moves it: that is what it was made for. The version is registered either way (it
    passed, so a rollback can still move `deploy` to it); a skipped move is tagged `skip_tag=skipped: …`.

    Args:
        release: What to register, and the `deploy` move.
        record: The export record of the model (which version it came from, and why it was exported).
        skip_tag: The version tag that says why `deploy` did not move.
        gate: How messages name the gate that passed (`Quality Gate 2`, `the int8 gate`).
        purpose: What the lease is held for (recorded on its ticket).
        quiet: No progress output.
    """
    with leases.hold(release.model, purpose) as held:
        stale = deploy_skipped(record)
        if stale:
            release = dataclasses.replace(release, tags={**release.tags, skip_tag: stale})
        version = register(release)
        if stale:
            say(f"{release.registered} v{version} passed {gate} but @deploy did not move: {stale.removeprefix('skipped: ')}", quiet)
            return version
        move(release, version, held)
    return version


def export_tags(record: ExportRecord, run_id: str, onnx_sha256: str) -> dict[str, str]:
    """The tags of a registered ONNX (or int8) version: its lineage and the hash of its files."""
    return {
        names.RUN_ID: run_id,
        names.PARENT_RUN_ID: str(record.parent_run_id),
        names.PARENT_MODEL_NAME: record.parent_model_name,
        names.PARENT_MODEL_VERSION: record.parent_model_version,
        names.DATA_DIGEST: str(record.data_digest),
        names.ONNX_SHA256: onnx_sha256,
    }
