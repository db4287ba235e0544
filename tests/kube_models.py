"""Check a manifest (plain dicts, as read from YAML) against the Kubernetes client's models, strictly.

The client's own deserializer ignores keys its models do not have, so a misspelt field
(`backoffLimits`, `secretKeyRefs`) would pass it and be dropped by the API server without a word.
`check` walks the document against each model's `attribute_map` and `openapi_types` instead and
fails on the first key or type the model does not have; `round_trip` then deserializes into the
model and serializes back, which must give the same document.
"""

from __future__ import annotations

from typing import Any

import pytest

client = pytest.importorskip("kubernetes.client", reason="the kubernetes client is in the test extra")

_PRIMITIVES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}


def check(data: Any, type_name: str, path: str = "") -> None:
    """Fail (AssertionError naming the path) on any key, or value type, that `type_name` does not define."""
    where = path or "(document)"
    if type_name.startswith("list["):
        assert isinstance(data, list), f"{where}: expected a list, got {data!r}"
        for i, item in enumerate(data):
            check(item, type_name[5:-1], f"{path}[{i}]")
    elif type_name.startswith("dict["):
        assert isinstance(data, dict), f"{where}: expected a mapping, got {data!r}"
        value_type = type_name[5:-1].split(", ", 1)[1]
        for key, value in data.items():
            assert isinstance(key, str), f"{where}: key {key!r} is not a string"
            check(value, value_type, f"{path}.{key}")
    elif type_name == "object":
        return  # free-form in the API (e.g. a CRD's raw extension)
    elif type_name in _PRIMITIVES:
        expected = _PRIMITIVES[type_name]
        ok = isinstance(data, expected) and not (type_name != "bool" and isinstance(data, bool))
        assert ok, f"{where}: expected {type_name}, got {type(data).__name__} {data!r}"
    else:
        model = getattr(client, type_name)
        assert isinstance(data, dict), f"{where}: expected a {type_name} mapping, got {data!r}"
        fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
        for key, value in data.items():
            assert key in fields, f"{path}.{key}: {type_name} has no field {key!r} (it has: {', '.join(sorted(fields))})"
            check(value, model.openapi_types[fields[key]], f"{path}.{key}")


def round_trip(data: dict[str, Any], type_name: str) -> Any:
    """Deserialize into the model (required fields and enums checked by the client) and back: same document."""
    api = client.ApiClient()
    obj = api._ApiClient__deserialize(data, type_name)  # the deserializer the client applies to API responses
    assert api.sanitize_for_serialization(obj) == data
    return obj


def validate(data: dict[str, Any], type_name: str) -> Any:
    check(data, type_name)
    return round_trip(data, type_name)


def json_fields(type_name: str) -> dict[str, str]:
    """The JSON field names of a model and their types, for schemas that inline a Kubernetes type."""
    model = getattr(client, type_name)
    return {json_key: model.openapi_types[attr] for attr, json_key in model.attribute_map.items()}
