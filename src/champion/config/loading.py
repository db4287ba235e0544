"""Loading a config: YAML file (or a logged tree), then the environment, then `--set`; one validation pass.

`resolve` also records what set each key (`champion config` marks every value with it).

Also what `--help` lists (`describe_keys`), and validation errors as one line per key, each naming
the variable that set the key when the environment did.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from champion.config.dotted import flatten, parse_override, set_dotted
from champion.config.environment import env_settings
from champion.config.schema import Config
from champion.errors import ConfigError


@dataclass(frozen=True)
class Resolved:
    """A validated config, and what set each key: `champion config` prints both."""

    config: Config
    # Dotted key (a leaf, or a key inside a mapping value such as data.checksums) -> what set it last:
    # "file <path>", "logged config" (`base`), "environment <variable>", or "--set". A key nothing
    # set holds its default.
    setters: dict[str, str]

    def origin(self, key: str) -> str | None:
        """What set the value of leaf `key` (the last of them, for a mapping set in parts); None: nothing did."""
        found = [who for k, who in self.setters.items() if k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.")]
        return found[-1] if found else None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read YAML (or start from `base`), apply the environment, then `--set` overrides; validate once.

    Precedence, lowest first: built-in defaults, the YAML file (or `base`), `env`, `overrides`.

    Args:
        env: Environment variables to read `CHAMPION_<SECTION>__<KEY>` settings from (`os.environ`),
            only where a config is resolved afresh; None (the default) reads none, so a config a run
            logged (`base`) is never changed by the environment of a later step.

    Raises:
        ConfigError: unreadable file, malformed override or variable, unknown key or bad value; a key
            the environment set is reported with the variable's name.
    """
    return resolve(path, overrides, base, env).config


def resolve(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Resolved:
    """`load_config`, also recording what set each key (arguments and errors as there)."""
    tree: dict[str, Any] = dict(base or {}) if path is None else _read_file(Path(path))
    setters: dict[str, str] = {}
    _record(setters, "", tree, f"file {path}" if path is not None else "logged config")
    origins: dict[str, str] = {}  # dotted key -> the variable that set it, for error messages
    for setting in env_settings(env) if env is not None else []:
        set_dotted(tree, setting.key, setting.value, origin=setting.variable)
        _record(setters, setting.key, setting.value, f"environment {setting.variable}")
        origins[setting.key] = setting.variable
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
        _record(setters, key, value, "--set")
        for k in [k for k in origins if k == key or k.startswith(f"{key}.")]:
            del origins[k]  # --set replaced what the variable set: it is not to blame for errors there
    try:
        return Resolved(Config.model_validate(tree), setters)
    except ValidationError as exc:
        raise ConfigError(_format(exc, origins)) from None


def _record(setters: dict[str, str], key: str, value: Any, who: str) -> None:
    """Note that `who` set `key` to `value`: it replaced whatever was below `key` (as `set_dotted` does)."""
    for k in [k for k in setters if not key or k == key or k.startswith(f"{key}.")]:
        del setters[k]
    leaves = flatten(value, f"{key}." if key else "") if isinstance(value, dict) and value else {key: value}
    for k in leaves:
        if k:
            setters[k] = who  # appended last: the latest setter of a key is the last one that names it


def _read_file(p: Path) -> dict[str, Any]:
    """The tree of a YAML config file."""
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where an unknown key was found, for the error message."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _format(error: ValidationError, origins: Mapping[str, str] | None = None) -> str:
    """One line per error; a key the environment set is prefixed with the variable that set it."""
    lines = []
    for e in error.errors():
        loc = tuple(p for p in e["loc"])
        key = ".".join(str(p) for p in loc) or "(root)"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_section_keys(loc))
            line = f"{key}: unknown key (allowed here: {allowed})"
        else:
            line = f"{key}: {e['msg']} (got {e.get('input')!r})"
        # A section's own rule (e.g. the splits must leave training data) is blamed on every
        # variable that set a key inside it, and a bad list item on the variable that set the list.
        named = [v for k, v in (origins or {}).items() if k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.")]
        lines.append(f"{', '.join(sorted(named))}: {line}" if named else line)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf, for `--help`."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            else:
                default = field.get_default(call_default_factory=True)
                shown = json.dumps(to_jsonable_python(default))
                rows.append((f"{prefix}{name}", shown, field.description or ""))

    walk(Config, "")
    return rows
