"""A small validator for the subset of JSON Schema that edgeport's own documents use (the
manifest, bench reports, ship recipes).

The light runtime must validate a manifest without extra packages, so this is ~80 lines
of plain Python rather than the ``jsonschema`` package; the tests check that both agree
on the schemas.  One deliberate difference: a number must be finite (JSON readers accept
``NaN`` and ``Infinity``, and a NaN threshold silently switches a gate off).

Keywords understood: type, enum, const, properties, required, additionalProperties,
items, minItems, maxItems, minimum, maximum, exclusiveMinimum, minLength, anyOf.
"""

from __future__ import annotations

import math
from typing import Any

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def problems(value: Any, schema: dict, path: str = "") -> list[str]:
    """Every way ``value`` breaks ``schema``, each as ``'path': what is wrong``."""
    where = f"'{path}'" if path else "the document"
    if "anyOf" in schema:
        if all(problems(value, option, path) for option in schema["anyOf"]):
            return [f"{where} matches none of the allowed forms"]
        return []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_TYPES[k](value) for k in kinds):
            return [f"{where} must be {' or '.join(kinds)}, not {_describe(value)}"]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where} must be a finite number, not {value}"]
    if "const" in schema and value != schema["const"]:
        return [f"{where} must be {schema['const']!r}, not {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where} must be one of {', '.join(map(str, schema['enum']))} (got {value!r})"]
    found: list[str] = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{where} must be >= {schema['minimum']} (got {value})")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{where} must be <= {schema['maximum']} (got {value})")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            found.append(f"{where} must be > {schema['exclusiveMinimum']} (got {value})")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        found.append(f"{where} must not be empty")
    if isinstance(value, dict):
        found.extend(_object_problems(value, schema, path))
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            found.append(f"{where} must have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            found.append(f"{where} must have at most {schema['maxItems']} items")
        if "items" in schema:
            for index, item in enumerate(value):
                found.extend(problems(item, schema["items"], f"{path}[{index}]"))
    return found


def _object_problems(value: dict, schema: dict, path: str) -> list[str]:
    found = []
    properties = schema.get("properties", {})
    for key in schema.get("required", ()):
        if key not in value:
            found.append(f"'{_join(path, key)}' is missing")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if not isinstance(key, str):
            found.append(f"'{path}' has a non-string key {key!r}")
        elif key in properties:
            found.extend(problems(item, properties[key], _join(path, key)))
        elif extra is False:
            found.append(f"'{_join(path, key)}' is not a known field")
        elif isinstance(extra, dict):
            found.extend(problems(item, extra, _join(path, key)))
    return found


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)
