"""The search space: the values of a recipe written as ranges or choices, and the recipe one point of it makes.

A searched value is a mapping in place of the value:

    weight: {search: [0.0, 1.0]}            # a float range (`log: true`, `step: 0.1`, `type: int` allowed)
    merge_method: {choice: [ties, dare_ties]}
    density: [{filter: self_attn, value: {search: [0.1, 1.0]}}, {value: {search: [0.1, 1.0]}}]  # per layer group

Each gets a readable name from where it stands (`lambda`, `models.shape-only.weight`,
`components.language.density.self_attn`), or the one given with `name:`. A parameter that the chosen method
does not read is not searched for that candidate (it is left out of the candidate's recipe), so choosing
between methods does not spend trials on parameters that change nothing.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from ..errors import RecipeError

LEAF_KEYS = {"search", "choice"}
OPTIONS = {"search", "choice", "log", "step", "type", "name"}


@dataclass(frozen=True)
class Dimension:
    """One searched value: where it stands in the recipe and what it may take."""

    name: str
    path: tuple  # keys and list indices from the recipe's root
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    parameter: str | None = None  # the method parameter it sets (None: not a parameter, e.g. merge_method)

    @property
    def default(self) -> Any:
        """The value a candidate takes where its values lack this one: the middle of the range, or the first
        choice. (The space is first checked, and the model built, at the low ends: `lowest`.)"""
        if self.choices is not None:
            return self.choices[0]
        if self.integer:
            return int(round((self.low + self.high) / 2))
        if self.log:
            return (self.low * self.high) ** 0.5
        return (self.low + self.high) / 2

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def _leaf(where: str, path: tuple, value: dict, parameter: str | None) -> Dimension:
    unknown = set(value) - OPTIONS
    if unknown or len(LEAF_KEYS & set(value)) != 1:
        raise RecipeError(f"{where}: a searched value has one of `search: [LOW, HIGH]` or `choice: [...]`, and "
                          f"may add log, step, type, name (got {', '.join(sorted(value))})")
    name = value.get("name")
    if "choice" in value:
        choices = value["choice"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, (str, int, float, bool))
                                                                   for c in choices):
            raise RecipeError(f"{where}: `choice` takes a list of plain values, got {choices!r}")
        return Dimension(name, path, choices=tuple(choices), parameter=parameter)
    bounds = value["search"]
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds) or bounds[0] >= bounds[1]):
        raise RecipeError(f"{where}: `search` takes [LOW, HIGH] with LOW < HIGH, got {bounds!r}")
    kind = value.get("type", "float")
    if kind not in ("float", "int"):
        raise RecipeError(f"{where}: `type` is float or int, got {kind!r}")
    log = bool(value.get("log", False))
    if log and bounds[0] <= 0:
        raise RecipeError(f"{where}: a log range needs LOW > 0, got {bounds[0]}")
    step = value.get("step")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0 or log):
        raise RecipeError(f"{where}: `step` is a positive number and cannot go with `log`")
    low, high = float(bounds[0]), float(bounds[1])
    if kind == "int":  # optuna samples integers between the whole numbers inside the range
        low, high = float(math.ceil(low)), float(math.floor(high))
        if low > high:
            raise RecipeError(f"{where}: `type: int` over {bounds!r} holds no integer; widen the range or drop `type`")
    return Dimension(name, path, low=low, high=high, log=log, step=step, integer=kind == "int", parameter=parameter)


def _label(node: Any, key: Any) -> str:
    """How a path element reads in a dimension's name: list entries by their model or filter."""
    if isinstance(key, int) and isinstance(node, list) and isinstance(node[key], dict):
        entry = node[key]
        if isinstance(entry.get("model"), str):
            return PurePath(entry["model"]).name or entry["model"]
        if "filter" in entry or "value" in entry:
            return str(entry.get("filter") or "*")
    return str(key)


def find_dimensions(recipe: dict) -> list[Dimension]:
    """Every searched value of `recipe`, in the order they stand."""
    found: list[Dimension] = []

    def walk(node: Any, path: tuple, labels: tuple, parameter: str | None) -> None:
        if isinstance(node, dict):
            if LEAF_KEYS & set(node):
                where = ".".join(str(p) for p in path) or "recipe"
                dim = _leaf(where, path, node, parameter)
                name = dim.name or ".".join(label for label in labels if label not in ("parameters", "value"))
                found.append(Dimension(**{**dim.__dict__, "name": name}))
                return
            for k, v in node.items():
                inner = k if path and path[-1] == "parameters" else parameter
                walk(v, path + (k,), labels + (str(k),), inner)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + (i,), labels + (_label(node, i),), parameter)

    walk(recipe, (), (), None)
    names = [d.name for d in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecipeError(f"searched values share the name {twice[0]}; give each a `name:`")
    if not found:
        raise RecipeError("the recipe searches nothing: write a value as {search: [LOW, HIGH]} or {choice: [...]}")
    return found


def _get(node: Any, path: tuple) -> Any:
    for k in path:
        node = node[k]
    return node


def method_at(recipe: dict, path: tuple, values: dict[str, Any], dims: list[Dimension]) -> str | None:
    """The merge method of the section that holds `path` (the candidate's choice where it is searched)."""
    for cut in range(len(path), -1, -1):
        node = _get(recipe, path[:cut])
        if isinstance(node, dict) and "merge_method" in node:
            method = node["merge_method"]
            if isinstance(method, dict):
                dim = next(d for d in dims if d.path == path[:cut] + ("merge_method",))
                return values.get(dim.name, dim.default)
            return method
    return None


def reads(method: str | None, parameter: str) -> bool:
    """Whether `method` reads `parameter` (unknown methods: assume it does; planning reports them)."""
    from ..methods import get_method

    try:
        spec = get_method(method)
    except RecipeError:
        return True
    return parameter in spec.model_params or parameter in spec.global_params


def check_read(dims: list[Dimension], recipe: dict) -> None:
    """Refuse a searched parameter that no method its section may use reads: every trial would leave it out, so
    there would be nothing to search in it."""
    for d in dims:
        if d.parameter is None:
            continue
        methods = {method_at(recipe, d.path, {c.name: choice}, dims)
                   for c in dims if c.path[-1] == "merge_method" and c.choices for choice in c.choices}
        methods = methods or {method_at(recipe, d.path, {}, dims)}
        if not any(reads(m, d.parameter) for m in methods):
            raise RecipeError(f"searched value {d.name}: merge method {' / '.join(sorted(map(str, methods)))} never "
                              f"reads `{d.parameter}`, so there is nothing to search; give it a plain value or drop it")


def active(dims: list[Dimension], recipe: dict, values: dict[str, Any]) -> list[Dimension]:
    """The dimensions that change a candidate with these values (parameters its method reads)."""
    return [d for d in dims if d.parameter is None or reads(method_at(recipe, d.path, values, dims), d.parameter)]


def bind(recipe: dict, dims: list[Dimension], values: dict[str, Any]) -> dict:
    """The plain recipe of one candidate: each searched value replaced by its value in `values` (the default
    where `values` lacks it); a parameter the candidate's method does not read is left out."""
    out = copy.deepcopy(recipe)
    dropped = []
    for d in dims:
        if d.name in values:
            value = values[d.name]
        elif d.parameter is not None and not reads(method_at(recipe, d.path, values, dims), d.parameter):
            dropped.append(d.path)
            continue
        else:
            value = d.default
        _get(out, d.path[:-1])[d.path[-1]] = value
    for path in dropped:
        i = max(i for i in range(1, len(path)) if path[i - 1] == "parameters")
        _get(out, path[:i]).pop(path[i], None)  # the whole parameter, gradients and conditions too
    return out


def lowest(dims: list[Dimension]) -> dict:
    """Every searched value at the low end of its range (or its first choice)."""
    return {d.name: d.choices[0] if d.choices is not None else (int(d.low) if d.integer else d.low) for d in dims}


def neighbour(values: dict, dims: list[Dimension], step: float) -> dict:
    """The candidate a small step away: every searched range moved by `step` of its width (inwards at an end)."""
    out = dict(values)
    for d in dims:
        if d.name not in values or d.choices is not None:
            continue
        delta = step * (d.high - d.low)
        if d.integer:
            delta = max(1, round(delta))
        moved = values[d.name] + delta
        out[d.name] = moved if moved <= d.high else values[d.name] - delta
    return out
