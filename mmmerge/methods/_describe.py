"""What `mmmerge methods [NAME]` prints: each method's parameters (defaults, ranges, help) and its paper."""

from __future__ import annotations

from ._registry import REGISTRY, Param, get_method

BASE_TEXT = {"required": "needs a base_model", "optional": "uses a base_model when given",
             "ignored": "a base_model is an ordinary input"}


def param_line(name: str, p: Param, scope: str) -> str:
    default = "required" if p.required else f"default {p.default}"
    kind = {bool: "true/false", int: "integer", float: "number", str: "path"}.get(p.type, p.type.__name__)
    if p.choices:
        kind = "one of " + " / ".join(p.choices)
    rng = f", in {p.range_text()}" if p.type in (int, float) and (p.low is not None or p.high is not None) else ""
    return f"    {name} ({scope}, {kind}, {default}{rng}){': ' + p.help if p.help else ''}"


def describe(name: str) -> str:
    spec = get_method(name)
    lines = [f"{spec.name}: {spec.title}" + (f", {spec.reference}" if spec.reference else ""),
             f"    {BASE_TEXT[spec.base]}" + (", random (use --seed)" if spec.random else "")]
    params = [param_line(n, p, "per model") for n, p in spec.model_params.items()]
    params += [param_line(n, p, "global") for n, p in spec.global_params.items()]
    lines += params or ["    (no parameters)"]
    return "\n".join(lines)


def summary() -> str:
    """One line per method: its name, base policy and parameter names."""
    width = max(len(n) for n in REGISTRY)
    out = []
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        names = [*spec.model_params, *spec.global_params]
        out.append(f"{name:<{width}}  {BASE_TEXT[spec.base]:<33}  {', '.join(names) or '-'}")
    return "\n".join(out)


def describe_or_list(name: str | None = None) -> str:
    """`mmmerge methods [NAME]`: one method's parameters and paper, or every method on a line."""
    return describe(name) if name else summary()
