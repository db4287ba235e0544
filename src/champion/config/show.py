"""The resolved config as a config file, each value marked with what set it (`champion config`).

Like LightningCLI's `--print_config` and `yolo cfg`: every key, in the schema's order, with its
value and a trailing comment (`# default`, `# file FILE`, `# environment VARIABLE`, `# --set`).
Comments are YAML comments, so the text is itself a config file that resolves to the same config.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from champion.config.loading import Resolved

HEADER = (
    "# champion config: built-in defaults < --config file < CHAMPION_<SECTION>__<KEY> variables < --set.\n"
    "# Each value says which of them set it. This is a config file: champion run --config FILE\n"
)
_COMMENT_COLUMN = 48  # comments line up here; a longer line keeps its comment two spaces after it


def annotated_yaml(resolved: Resolved) -> str:
    """Every key of `resolved.config` as YAML, each leaf followed by `# <what set it>`."""
    lines: list[tuple[str, str | None]] = []  # (text, comment)

    def walk(section: BaseModel, prefix: str, indent: str) -> None:
        for name, field in type(section).model_fields.items():
            value = getattr(section, name)
            key = f"{prefix}{name}"
            if isinstance(value, BaseModel):
                lines.append((f"{indent}{name}:", None))
                walk(value, f"{key}.", indent + "  ")
                continue
            shown = to_jsonable_python(value)
            origin = resolved.origin(key)
            if origin is None:
                default = to_jsonable_python(field.get_default(call_default_factory=True))
                # A value nobody set that is not the default was filled in by a rule (a mode that follows its monitor).
                origin = "default" if shown == default else "derived from other keys"
            lines.append((f"{indent}{name}: {_inline(shown)}", origin))

    walk(resolved.config, "", "")
    column = max((len(text) for text, comment in lines if comment and len(text) <= _COMMENT_COLUMN), default=0)
    body = (text if comment is None else f"{text.ljust(column)}  # {comment}" for text, comment in lines)
    return HEADER + "\n".join(body) + "\n"


def _inline(value: Any) -> str:
    """`value` as one line of YAML (flow style), read back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1, allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...")  # a plain scalar is dumped as a document with an end marker
    # A string with line breaks would span lines; JSON's escapes keep it on one (JSON is YAML).
    return json.dumps(value) if "\n" in text else text
