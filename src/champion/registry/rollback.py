"""Rollback: move `champion` or `deploy` back to an earlier holder, from the registry's history.

`champion models rollback NAME` replays the alias's events (`history.events`) to find the version
that held it before the current one, checks that the target passed the gate the alias requires, and
moves the alias under the model's lease, recorded as a `rollback` event. Repeated rollbacks walk
further back instead of bouncing between two versions.
"""

from __future__ import annotations

from champion import names
from champion.errors import ChampionError, ConfigError
from champion.registry import lease as leases
from champion.registry import tracking
from champion.registry.history import (
    DEPLOY_HOLDERS, ROLLBACK, ROLLBACK_ALIASES, ROLLED_BACK_TAG, Moved, events, move_alias, owner,
)  # fmt: skip


def holders(model: str, alias: str, registered_model: str) -> list[str]:
    """The versions that held `alias`, replayed from the history: the current holder last, the one a
    rollback returns to just before it. A rollback pops the version it left (and anything above the
    version it returned to), so repeated rollbacks walk further back instead of bouncing between two."""
    stack: list[str] = []
    for e in events(model, alias=alias, registered_model=registered_model):
        if e.deleted:
            continue
        if e.reason == ROLLBACK:
            if stack and stack[-1] == e.from_version:
                stack.pop()
            if e.to_version in stack:
                del stack[stack.index(e.to_version) + 1 :]
            elif e.to_version is not None:
                stack.append(e.to_version)
        elif e.to_version is not None and (not stack or stack[-1] != e.to_version):
            stack.append(e.to_version)
    return stack


def rollback(name: str, alias: str = tracking.DEPLOY_ALIAS, to: str | None = None) -> Moved:
    """Move `alias` back to its previous holder (from the history) or to version `to`.

    `deploy` lives on `<model>-onnx` (NAME may be given with or without `-onnx`) and, for the int8
    model, on `<model>-onnx-int8` (NAME given so); the target must have passed the gate the alias
    requires (`champion`: gate1.result=passed, `deploy`: gate2.result=passed, int8_gate.result=passed).
    The version moved away from is tagged `rolled_back=true` (and `rolled_back.when`, `rolled_back.event`). Rolling back `champion` also moves `previous_champion`
    to the holder before the new champion (or removes it when there is none). Everything is checked
    before anything moves.

    Raises:
        ConfigError: an alias rollback does not handle.
        ChampionError: unknown model or version, no earlier holder, or a target that never passed the gate.
    """
    if alias not in ROLLBACK_ALIASES:
        raise ConfigError(f"--alias {alias!r}: rollback moves {' or '.join(ROLLBACK_ALIASES)}")
    if to is not None and not (str(to).isdigit() and int(to) > 0):
        raise ConfigError(f"--to {to!r}: a version number (1, 2, ...)")
    model = owner(name)
    if alias != tracking.DEPLOY_ALIAS and model != name:
        raise ConfigError(f"@{alias} lives on {model!r}, not on {name!r}: champion models rollback {model} --alias {alias}")
    target = model
    if alias == tracking.DEPLOY_ALIAS:
        # The int8 model's @deploy when NAME names it, else the float ONNX model's.
        target = name if model != name and names.deploy_suffix(name) == names.INT8_SUFFIX else names.onnx_name(model)
    # Held from the read of the current holder to the last move: nothing moves the alias in between.
    with leases.hold(model, f"rollback @{alias} of {target}" + (f" to v{to}" if to else "")) as held:
        return _rollback(model, alias, target, to, held)


def _rollback(model: str, alias: str, target: str, to: str | None, held: leases.Lease) -> Moved:
    found = tracking.registered_model(target, f"look up registered model {target!r}")
    if found is None:
        raise ChampionError(
            f"there is no registered model {target!r} (holder of @{alias}); check the name (`champion models` lists them)"
        )
    current = found.aliases.get(alias)
    current = None if current is None else str(current)
    stack = holders(model, alias, target)
    if to is None:
        if current is None:
            raise ChampionError(f"{target!r} has no @{alias} to roll back")
        if not stack or stack[-1] != current:
            raise ChampionError(
                f"@{alias} of {target!r} is v{current}, but its history ends at "
                f"{'v' + stack[-1] if stack else 'nothing'}: it was moved outside champion. Give --to VERSION"
            )
        if len(stack) < 2:
            raise ChampionError(
                f"@{alias} of {target!r} has no earlier holder in its history (v{current} is the first); "
                f"nothing to roll back to. Give --to VERSION to move it to another version that passed the gate"
            )
        to = stack[-2]
    to = str(to)
    if to == current:
        raise ChampionError(f"v{to} already holds @{alias} of {target!r}; nothing moved")
    version = tracking.model_version(target, version=to, hint="nothing moved")
    gate_tag, report_path = ROLLBACK_ALIASES[alias], names.GATE1_REPORT
    if alias == tracking.DEPLOY_ALIAS:
        gate_tag, report_path = DEPLOY_HOLDERS[names.deploy_suffix(target)]
    if version.tags.get(gate_tag) != "passed":
        raise ChampionError(
            f"{target!r} v{to} never passed the gate @{alias} requires (version tag {gate_tag}=passed); nothing moved"
        )
    report = (tracking.version_run_id(version), report_path)
    moved = move_alias(model, alias, to, ROLLBACK, lease=held, registered_model=target, report=report)
    if moved.from_version is not None:
        with tracking.registry_errors(f"tag {target!r} v{moved.from_version} as rolled back (@{alias} moved to v{to})"):
            c = tracking.client()
            for key, value in {ROLLED_BACK_TAG: "true", f"{ROLLED_BACK_TAG}.when": moved.event.when,
                               f"{ROLLED_BACK_TAG}.alias": alias, f"{ROLLED_BACK_TAG}.event": moved.event.event_id}.items():  # fmt: skip
                c.set_model_version_tag(target, moved.from_version, key, value)
    if alias == tracking.CHAMPION_ALIAS:
        remaining = holders(model, alias, target)
        previous = remaining[-2] if len(remaining) >= 2 else None
        if previous != (None if (p := found.aliases.get(tracking.PREVIOUS_ALIAS)) is None else str(p)):
            move_alias(model, tracking.PREVIOUS_ALIAS, previous, ROLLBACK, lease=held, registered_model=target, champion=to)
    return moved
