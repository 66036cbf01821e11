"""Recipe parameters, resolved per tensor as mergekit 0.1.5 resolves them.

A value comes from the first scope that gives it (for a `models:` config: the model's own `parameters`, then
the global ones; for `slices:`: the source's, the slice's, then the global ones). Gradients are interpolated
at t = layer / (layers - 1) inside numbered layers (t = 1 for a one-layer model, or a one-layer slice) and t = 0
for all other tensors (embeddings, final norm, head). Values are typed leniently as mergekit's pydantic types
them ("1e-3" -> 0.001); ranges are checked by the method's schema.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable

from pydantic import TypeAdapter, ValidationError

from ..checkpoint import Component
from ..errors import RecipeError
from .recipe import Condition, MergeSection, Setting

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block|resblocks)\.(\d+)\.")


def layer_position(name: str, num_layers: int) -> float:
    """mergekit's t for a tensor: layer / (layers - 1) inside numbered layers (1 for one layer), else 0."""
    m = LAYER_RE.search(name)
    if not m:
        return 0.0
    if num_layers <= 1:
        return 1.0
    return int(m.group(1)) / (num_layers - 1)


# mergekit's module inference for architectures it has no definition of: a module is the name up to the first
# numbered part, its layer count the largest number + 1 (mergekit/architecture/auto.py)
STACK_RE = re.compile(r"\.(\d+)\.")


def stack_positions(names) -> dict[str, float]:
    """mergekit's t for each tensor of a model merged whole: layer / (layers - 1) within the tensor's own stack of
    numbered layers (the vision tower's and the decoder's counts differ), 1 for a one-layer stack, else 0."""
    found = {n: m for n in names if (m := STACK_RE.search(n))}
    counts: dict[str, int] = {}
    for n, m in found.items():
        counts[n[:m.start()]] = max(counts.get(n[:m.start()], 0), int(m.group(1)) + 1)
    out = {n: 0.0 for n in names}
    for n, m in found.items():
        layers = counts[n[:m.start()]]
        out[n] = int(m.group(1)) / (layers - 1) if layers > 1 else 1.0
    return out


def count_layers(component: Component) -> int:
    for key in ("num_hidden_layers", "num_layers", "n_layer"):
        if isinstance(component.config.get(key), int):
            return component.config[key]
    found = {int(m.group(1)) for n in component.tensors if (m := LAYER_RE.search(n))}
    return max(found) + 1 if found else 0


def make_validator(method: str, pname: str, p) -> Callable[[Any], Any]:
    """Lax type conversion as mergekit's pydantic does (\"1e-3\" -> 0.001); ranges are checked later."""
    adapter = TypeAdapter(p.type | None if p.nullable else p.type)

    def validate(v):
        try:
            return adapter.validate_python(v)
        except ValidationError:
            kind = {bool: "true or false", int: "an integer", float: "a number"}.get(p.type, p.type.__name__)
            raise RecipeError(f"{method}: parameter `{pname}` must be {kind}, got {v!r}") from None

    return validate


def check_names(spec, section: MergeSection, base_ref: str | None, where: str, notes: list[str],
                warnings: list[str]) -> None:
    """Parameters the method does not read where they are given are ignored, as mergekit 0.1.5 ignores them
    (a name it does not know anywhere; a shared parameter such as `normalize` given per model): each name is
    noted once with every place it is given, and a name that looks like a misspelling of one the method reads
    is warned about instead, once."""
    known = sorted({*spec.model_params, *spec.global_params})
    unknown: dict[str, list[str]] = {}  # name -> the places that give it, in recipe order

    shared_scopes = [(f"{where}parameters", section.parameters)]
    model_scopes = [(f"{where}models[{e.model}]", e.model, e.parameters) for e in section.models or []]
    for i, sl in enumerate(section.slices or []):
        shared_scopes.append((f"{where}slices[{i}].parameters", sl.parameters))
        model_scopes += [(f"{where}slices[{i}].sources[{src.model}]", src.model, src.parameters) for src in sl.sources]
    for at, scope in shared_scopes:
        for name in scope or {}:
            if name not in spec.model_params and name not in spec.global_params:
                unknown.setdefault(name, []).append(at)
    for at, model, scope in model_scopes:
        for name in scope or {}:
            if name in spec.global_params:
                notes.append(f"{at}: parameter `{name}` is ignored: {spec.name} reads it for all models from the "
                             f"global (or slice) `parameters` only, as mergekit does")
            elif name not in spec.model_params:
                unknown.setdefault(name, []).append(at)
        if model == base_ref and scope:
            notes.append(f"{where}{spec.name} does not use per-model parameters of the base model {model}")
    for name, places in unknown.items():
        ignored = f"{', '.join(places)}: parameter `{name}` is ignored: {spec.name} does not read it"
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if close:
            warnings.append(f"{ignored}; did you mean `{close[0]}`?")
        else:
            notes.append(f"{ignored} (it takes: {', '.join(known) or 'none'}); mergekit ignores it too")


def resolve(schema: dict, scopes: list, tensor_name: str, t: float, validators: dict) -> dict:
    """Raw values (typed, not range-checked) from the first scope that gives each parameter."""
    out = {}
    for pname in schema:
        for scope in scopes:
            if scope is not None and pname in scope:
                try:
                    value = evaluate_setting(tensor_name, scope[pname], t, validators[pname])
                except RecipeError as e:
                    raise RecipeError(f"tensor {tensor_name}: {e}") from None
                if value is not None:
                    out[pname] = value
                    break
    return out


def evaluate_setting(tensor_name: str, setting: Setting, t: float, validate: Callable[[Any], Any]) -> Any:
    """One parameter value for one tensor, with mergekit 0.1.5's semantics.

    `t` in [0, 1] is the position of the tensor's layer. A list of numbers is a gradient: piecewise
    linear over evenly spaced points; a list holding a bool or a string picks the point at or below `t`.
    Conditions: the first whose filter is a substring of `tensor_name` (or is absent / "*") gives the
    value; when none matches the result is None (the next scope is consulted).
    """
    if isinstance(setting, Condition):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return validate(setting)
    if not isinstance(setting, list):
        raise RecipeError(f"unexpected parameter value {setting!r}")
    if not setting:
        return None
    if all(isinstance(e, (bool, int, float, str)) for e in setting):
        values = [validate(e) for e in setting]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return validate((1 - frac) * values[i0] + frac * values[i1])
    for cond in setting:
        if not isinstance(cond, Condition):
            raise RecipeError(f"a parameter list mixes conditions and plain values: {setting!r}")
        if cond.filter is None or cond.filter == "*" or (tensor_name and cond.filter in tensor_name):
            return evaluate_setting(tensor_name, cond.value, t, validate)
    return None
