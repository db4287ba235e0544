"""The promotion policy of a registered model: the bar its candidates and its exports are held to.

The bar belongs to the registered model, not to the candidate: the first promotion of `<name>`
stores its `promotion_criteria`, Gate 2's tolerances (`export.atol`, `export.rtol`,
`export.num_samples`, `export.batch_sizes`) and the int8 gate's `export.int8.max_accuracy_drop` as
JSON in the registered-model tag `champion.policy`.
Later promotions and every export of `<name>` are judged by that stored policy, whatever the
candidate's own config says. Only `change` (CLI: `champion models policy NAME --set KEY=VALUE`)
alters it, and each change is a `policy changed` event in the registry's history (`champion.registry.history`).

The keys are the config's own pydantic fields (same names, bounds and messages), so a value the
config refuses is refused here too. A bar added later is a new field of `ExportBar`; policies
stored before it existed read it as the config default (so `export.int8.max_accuracy_drop`, added
with the int8 gate, is 0.01 for a model whose policy was stored earlier, until it is changed).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, ValidationError, create_model

from champion.registry import history, tracking
from champion.config import Config, ExportConfig, Int8Config, PromotionConfig, Section, flatten, parse_override, set_dotted
from champion.errors import ChampionError, ConfigError
from champion import names

# MLflow (seconds to import) is imported inside the functions that use it: `champion --help` imports
# this module (through champion.cli.models).

POLICY_TAG = names.POLICY
SCHEMA = 1
# Gate 2's bar: the export keys that decide pass or fail (not formats or opset, which say what to build).
GATE2_KEYS = ("atol", "rtol", "num_samples", "batch_sizes")
# The int8 gate's bar (not the calibration settings, which say how to build the int8 model).
INT8_KEYS = ("max_accuracy_drop",)

# The same field definitions as ExportConfig, restricted to the bar: one source of truth for bounds.
Int8Bar = create_model(
    "Int8Bar", __base__=Section, **{k: (Int8Config.model_fields[k].annotation, Int8Config.model_fields[k]) for k in INT8_KEYS}
)
ExportBar = create_model(
    "ExportBar", __base__=Section,
    **{k: (ExportConfig.model_fields[k].annotation, ExportConfig.model_fields[k]) for k in GATE2_KEYS},
    int8=(Int8Bar, Field(default_factory=Int8Bar)),
)  # fmt: skip


class Policy(Section):
    promotion_criteria: PromotionConfig = Field(default_factory=PromotionConfig)
    export: ExportBar = Field(default_factory=ExportBar)  # type: ignore[valid-type]

    @classmethod
    def from_config(cls, cfg: Config) -> "Policy":
        """The bar a run's config asks for (used as is only until the model has a stored policy)."""
        int8 = Int8Bar(**{k: getattr(cfg.export.int8, k) for k in INT8_KEYS})
        bar = ExportBar(**{k: getattr(cfg.export, k) for k in GATE2_KEYS}, int8=int8)
        return cls(promotion_criteria=cfg.promotion_criteria.model_copy(), export=bar)

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, **self.model_dump(mode="json")}, sort_keys=True)

    def flat(self) -> dict[str, Any]:
        """Dotted keys and values, e.g. {"promotion_criteria.threshold": 0.9, ...}."""
        return flatten(self.model_dump(mode="json"))


def _validate(tree: dict[str, Any], what: str) -> Policy:
    try:
        return Policy.model_validate(tree)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                lines.append(f"{key}: unknown policy key (allowed: {', '.join(sorted(Policy().flat()))})")
            else:
                lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError(f"invalid {what}:\n  " + "\n  ".join(lines)) from None


def parse(text: str, name: str) -> Policy:
    """A stored policy tag back into a Policy; a hand-edited, unreadable tag is an error, not a default."""
    try:
        tree = json.loads(text)
    except ValueError as exc:
        raise ChampionError(f"the {POLICY_TAG} tag of {name!r} is not JSON ({exc}); fix it with `champion models policy {name} --set ...`") from None
    if not isinstance(tree, dict):
        raise ChampionError(f"the {POLICY_TAG} tag of {name!r} is not a JSON object")
    tree.pop("schema", None)
    try:
        return _validate(tree, f"stored policy of {name!r}")
    except ConfigError as exc:  # not a usage error of this command: the registry holds a bad value
        raise ChampionError(str(exc)) from None


def stored(name: str) -> Policy | None:
    """The policy stored on registered model `name`; None when the model or its policy does not exist yet.

    Raises:
        RegistryError: the registry could not be reached (never read as "no policy").
    """
    model = tracking.registered_model(name, f"read the promotion policy of {name!r}")
    text = None if model is None else model.tags.get(POLICY_TAG)
    return None if text is None else parse(text, name)


def store(name: str, policy: Policy, reason: str) -> None:
    """Store `policy` on `name` (creating the registered model) and record a `policy stored` event."""
    from mlflow.exceptions import MlflowException

    c = tracking.client()
    with tracking.registry_errors(f"store the promotion policy on {name!r}"):
        try:
            c.create_registered_model(name, tags={POLICY_TAG: policy.to_json()})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            c.set_registered_model_tag(name, POLICY_TAG, policy.to_json())
    history.record(name, history.POLICY_STORED, policy=policy.flat(), why=reason)


def change(name: str, assignments: list[str]) -> tuple[Policy | None, Policy]:
    """Apply `KEY=VALUE` assignments (values read as YAML) to the stored policy of `name`.

    A model with no stored policy yet starts from its champion's bar (promoted before policies
    existed: the policy is adopted first) or, with no champion, from the config defaults. Records a `policy changed` event with old and new values.

    Returns:
        The policy before (None when there was none) and after.

    Raises:
        ConfigError: malformed assignment, unknown key or bad value (nothing is changed).
        ChampionError: no registered model `name`.
        RegistryError: the registry could not be reached.
    """
    if tracking.registered_model(name) is None:
        raise ChampionError(f"there is no registered model {name!r}; check the name (champion models policy NAME)")
    old = effective(name)
    base = old or Policy()
    tree = base.model_dump(mode="json")
    for text in assignments:
        key, value = parse_override(text)
        if key not in base.flat():
            raise ConfigError(f"--set {key}: unknown policy key (allowed: {', '.join(sorted(base.flat()))})")
        set_dotted(tree, key, value)
    new = _validate(tree, f"policy for {name!r}")
    if old is not None and new == old:
        return old, new
    with tracking.registry_errors(f"store the promotion policy on {name!r}"):
        tracking.client().set_registered_model_tag(name, POLICY_TAG, new.to_json())
    before = old.flat() if old else None
    after = new.flat()
    changed = {k: [None if before is None else before.get(k), v] for k, v in after.items() if before is None or before.get(k) != v}
    history.record(name, history.POLICY_CHANGED, old=before, new=after, changed=changed)
    return old, new


def shown(name: str) -> Policy:
    """The policy stored on `name`, as `champion models policy NAME` shows it (never adopted here).

    Raises:
        ChampionError: `name` has no stored policy (the message says how one is stored).
        RegistryError: the registry could not be reached.
    """
    found = stored(name)
    if found is None:
        raise ChampionError(
            f"{name!r} has no stored promotion policy: the first `champion promote` of {name!r} stores it "
            f"(or set one with `champion models policy {name} --set KEY=VALUE`)"
        )
    return found


def lines(policy: Policy) -> list[str]:
    """One `KEY=VALUE` line per dotted key, the value as JSON (which `--set KEY=VALUE` reads back)."""
    return [f"{key}={json.dumps(value)}" for key, value in policy.flat().items()]


def changes(old: Policy | None, new: Policy) -> list[str]:
    """`changed: KEY: OLD -> NEW` for each key whose value `new` changed (values as JSON; OLD is null
    for a model that had no policy), in the policy's key order."""
    before = old.flat() if old else {}
    # A sentinel, not None: with no old policy every key is new, even one whose value is null.
    return [
        f"changed: {key}: {json.dumps(before.get(key))} -> {json.dumps(value)}"
        for key, value in new.flat().items()
        if before.get(key, object()) != value
    ]


def report(stored_policy: Policy | None, candidate: Policy) -> dict[str, Any]:
    """The `policy` section of gate_report.json: which bar judged, and what the candidate asked for."""
    judged = stored_policy or candidate
    return {
        "source": "registered model" if stored_policy else "candidate config (first promotion; stored on pass)",
        "stored": stored_policy.model_dump(mode="json") if stored_policy else None,
        "candidate_config": candidate.model_dump(mode="json"),
        "differs_from_candidate": sorted(k for k, v in judged.flat().items() if candidate.flat().get(k) != v),
    }


def adopt(name: str, champion) -> Policy:
    """Store, for a model promoted before policies existed, the bar its champion was promoted under.

    Without this, the first candidate after an upgrade would set the bar with its own config.

    Args:
        name: The registered model.
        champion: Its model version holding @champion (whose run logged the config it was judged by).
    """
    found = Policy.from_config(tracking.load_run_config(champion.run_id))
    store(name, found, reason=f"adopted from the config of champion v{champion.version} (promoted before policies were stored)")
    return found


def effective(name: str) -> Policy | None:
    """The bar `name` is judged by: its stored policy or, for a model promoted before policies existed,
    its champion's (adopted, i.e. stored, now); None for a model with neither."""
    found = stored(name)
    if found is None and (champion := tracking.current_champion(name)) is not None:
        found = adopt(name, champion)
    return found


def require(name: str) -> Policy:
    """The policy of `name`, for Gate 2; its absence is an error that names the fix."""
    found = effective(name)
    if found is None:
        raise ChampionError(
            f"registered model {name!r} has no stored promotion policy (tag {POLICY_TAG}) and no @champion to take "
            f"one from; it is stored at the first promotion. Promote a run first (champion promote --run-id RUN_ID), "
            f"or store one with `champion models policy {name} --set export.atol=1e-5` (the rest from the defaults)"
        )
    return found

