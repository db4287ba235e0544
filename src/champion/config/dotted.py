"""Dotted config keys (`training.early_stopping.patience`): flattening a tree, setting one key, reading `--set`.

Plain dicts and YAML only, no models: the schema flattens itself with `flatten`, and loading builds
the tree it validates with `set_dotted`.
"""

from __future__ import annotations

from typing import Any

import yaml

from champion.errors import ConfigError

# The training shortcuts of the CLI (--epochs, --learning-rate, --batch-size): the keys they set.
SEED_FLAGS = {"epochs": "training.epochs", "learning_rate": "training.learning_rate", "batch_size": "training.batch_size"}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections to dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, origin: str | None = None) -> None:
    """Set `value` at a dotted path of a nested dict, creating sections on the way.

    Args:
        origin: What set the key, for the error message (default: `--set <dotted>`).
    """
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin or f'--set {dotted}'}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def read_value(raw: str, origin: str) -> Any:
    """A value as `--set` and the environment give it: YAML, so `[64,64]`, `3` and `false` get their types."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: value is not valid YAML ({exc})") from exc


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as YAML, so `[64,64]`, `3` and `false` get their types."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set training.epochs=3")
    return key.strip(), read_value(raw, f"--set {text!r}")
