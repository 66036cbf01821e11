"""Parameter values set into a recipe parsed once, so that many recipes that differ only in those values (the
candidates of a search) are not each validated again.

Only values inside a `parameters` mapping are set this way: they are plain numbers, text, booleans or lists of
them, which the parsed form holds as they are written. Any other difference (a method, a model, a dtype, a
parameter added or left out) is a recipe of another shape: `bind_values` says so and the caller parses it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .recipe import Recipe

_MISSING = object()


def differences(old: Any, new: Any, path: tuple = ()) -> list[tuple[tuple, Any]] | None:
    """The (path, new value) of every leaf where `new` differs from `old`; None when their shapes differ (other
    keys, other list lengths, a leaf where the other has a mapping or list)."""
    if isinstance(old, dict) and isinstance(new, dict):
        if old.keys() != new.keys():
            return None
        found = []
        for k in old:
            inner = differences(old[k], new[k], path + (k,))
            if inner is None:
                return None
            found += inner
        return found
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return None
        found = []
        for i, (a, b) in enumerate(zip(old, new)):
            inner = differences(a, b, path + (i,))
            if inner is None:
                return None
            found += inner
        return found
    if isinstance(old, (dict, list)) or isinstance(new, (dict, list)):
        return None
    return [] if type(old) is type(new) and old == new else [(path, new)]


def _step(node: Any, key: Any) -> Any:
    if isinstance(node, BaseModel):
        return getattr(node, key, _MISSING) if isinstance(key, str) else _MISSING
    if isinstance(node, dict):
        return node.get(key, _MISSING)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return _MISSING


def bind_values(parsed: Recipe, changes: list[tuple[tuple, Any]]) -> Recipe | None:
    """A copy of `parsed` with each (path, value) set, paths as the recipe is written (keys and list indices from
    its root); None when a path does not end inside a `parameters` mapping of the parsed form."""
    if any("parameters" not in path[:-1] or not isinstance(value, (bool, int, float, str)) for path, value in changes):
        return None
    out = parsed.model_copy(deep=True)
    root = out.merge if out.merge is not None else out.multimodal
    for path, value in changes:
        node = root
        for key in path[:-1]:
            node = _step(node, key)
            if node is _MISSING:
                return None
        last = path[-1]
        if isinstance(node, dict) and last in node or isinstance(node, list) and isinstance(last, int) \
                and 0 <= last < len(node):
            node[last] = value
        elif isinstance(node, BaseModel) and last in type(node).model_fields:
            setattr(node, last, value)
        else:
            return None
    return out
