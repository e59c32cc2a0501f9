"""Field-by-field mutations of a JSON document, for the tests that prove every malformed
manifest or report gets a clean error, including fields added later."""

from __future__ import annotations

import copy
from typing import Any, Iterator


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _paths(item, path + (index,))


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def _replacements(value: Any) -> list[tuple[str, Any]]:
    out = [("null", None)]
    if isinstance(value, bool):
        out += [("string", "yes"), ("number", 2)]
    elif isinstance(value, (int, float)):
        out += [("string", "12"), ("nan", float("nan")), ("inf", float("inf")), ("negative", -1), ("list", [value])]
    elif isinstance(value, str):
        out += [("number", 7), ("list", [value]), ("object", {"value": value}), ("empty", "")]
    elif isinstance(value, list):
        out += [("object", {"0": value[:1]}), ("string", "list"), ("empty list", [])]
    elif isinstance(value, dict):
        out += [("list", list(value.values())[:1]), ("string", "object"), ("empty object", {})]
    return out


def mutations(document: dict) -> Iterator[tuple[str, dict]]:
    """(label, mutated deep copy): every field replaced by values of other types and by
    non-finite numbers, every field removed, an unknown key added to every object."""
    for path in list(_paths(document)):
        if not path:
            continue
        parent_path, key = path[:-1], path[-1]
        value = _get(document, path)
        for label, replacement in _replacements(value):
            mutated = copy.deepcopy(document)
            _get(mutated, parent_path)[key] = replacement
            yield f"{'.'.join(map(str, path))} -> {label}", mutated
        mutated = copy.deepcopy(document)
        del _get(mutated, parent_path)[key]
        yield f"{'.'.join(map(str, path))} removed", mutated
        if isinstance(value, dict):
            mutated = copy.deepcopy(document)
            _get(mutated, path)["unexpected_key"] = {"x": 1}
            yield f"{'.'.join(map(str, path))} + unknown key", mutated
