"""Method specs, typed parameter schemas, the registry and the one-tensor entry point.

A method is a pure function over the tensors of one output tensor:

    fn(tensors, base, params, global_params, generator) -> torch.Tensor

- ``tensors``: the inputs that are not the base model, in recipe order (all of the same shape and
  float dtype). For a method whose ``base`` policy is ``"ignored"`` (linear, karcher, passthrough) a
  recipe's base model is an ordinary input: it is one of ``tensors`` and ``base`` is None.
- ``base``: the base model's tensor, or None.
- ``params``: one dict per entry of ``tensors``, validated, with every default filled in.
- ``global_params``: one dict, validated, with every default filled in.
- ``generator``: a ``torch.Generator`` on the tensors' device for the random methods; None draws from
  torch's global generator, as mergekit does.

It returns a tensor of the inputs' shape and dtype; it may be one of the inputs itself (passthrough
without scale, a base with no other models), so callers must not modify inputs after merging in place.
``merge_tensor`` below does the checks and the float32 conversion and is what callers normally use.

Random methods draw in mergekit's order (models in input order, one Bernoulli draw per entry), so a
generator seeded with s gives the tensor mergekit gives after ``torch.manual_seed(s)`` on the same device.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import NonFiniteError, RecipeError, ShapeMismatchError
from ..io import pages

REQUIRED = object()  # marks a parameter without a default
BASE_POLICIES = ("required", "optional", "ignored")
CALLINGS = ("float32", "named", "streaming")  # how merge_tensor calls a method's function (MethodSpec.calling)


@dataclass(frozen=True)
class Param:
    """One parameter: a type (float, int or bool), a default, and an allowed interval for numbers.

    ``low``/``high`` bound numbers, inclusive unless ``low_open``/``high_open``; ``nullable`` lets the
    value be None (passthrough's ``scale``); ``choices``: the words a ``str`` parameter may be (else a path).
    """

    type: type
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    help: str = ""
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def range_text(self) -> str:
        if self.low is None and self.high is None:
            return "any finite number"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high_open or self.high is None else ']'}"

    def coerce(self, method: str, name: str, value: Any) -> Any:
        """Return the value as this parameter's type, or raise RecipeError naming the parameter."""
        where = f"{method}: parameter `{name}`"
        if value is None and self.nullable:
            return None
        if self.choices:
            if value in self.choices:
                return value
            raise RecipeError(f"{where} must be one of {', '.join(self.choices)}, got {value!r}")
        if self.type is str:  # a file path (the data-aware methods' statistics)
            if isinstance(value, str) and value:
                return value
            raise RecipeError(f"{where} must be a path, got {value!r}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            raise RecipeError(f"{where} must be true or false, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number, got {value!r}")
        if self.type is int:
            if float(value) != int(value):
                raise RecipeError(f"{where} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise RecipeError(f"{where} must be finite, got {value!r}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise RecipeError(f"{where} must be in {self.range_text()}, got {value!r}")
        return value


@dataclass(frozen=True)
class MethodSpec:
    """Everything about a registered method, in one place: its function, parameter schema (the one home of every
    default), input contract, paper and how it is called.

    ``title``: the paper's title, authors and venue (what the model card and ``mmmerge methods`` print), or what
    the method is where there is no paper; ``reference``: the link to it.
    ``base``: "required" (needs a base model), "optional" (uses one when given) or "ignored" (the
    base model, if the recipe names one, is an ordinary input). ``min_models``/``max_models`` count the
    non-base inputs (all inputs when the base is ignored). ``random``: results depend on the generator.
    ``check(params, global_params)`` validates combinations of parameters (raises RecipeError).
    ``calling``: how ``merge_tensor`` calls ``fn`` (``call_method``), one of CALLINGS:
    - "float32": ``fn(tensors, base, params, global_params, generator)`` on float32 copies of the inputs (float64
      where an input is);
    - "named": the same, plus ``name=``, the name the merge writes the tensor under (or None when the caller does
      not know it), and ``input_names=``, each input's own name for it where they differ (None: all ``name``), to
      look up per-tensor statistics collected beforehand (regmean, fisher: mmmerge/calibration.py);
    - "streaming": ``fn`` takes the inputs in the dtype they come in (half precision too) and widens them itself,
      slice by slice, to the compute dtype: no full-size float32 copy of any input is made. It also takes
      ``out_dtype`` and writes each finished slice in that dtype, and ``out`` (an output file's own pages) to
      write into, so no full-size float32 result is made either.
    ``native``: a function of the same calling that computes in the inputs' own half precision, rounding where
    mergekit does (``native=True`` in ``method``: ``fn`` itself does).
    ``finite_inputs``: the method runs an SVD; LAPACK fails on NaN/inf and prints its own complaint on stdout
    first, so the inputs are checked for them before it runs (a cost small next to the SVD). For the other
    methods they are looked for only after a failure or a non-finite result.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    model_params: Mapping[str, Param] = field(default_factory=dict)
    global_params: Mapping[str, Param] = field(default_factory=dict)
    base: str = "required"
    min_models: int = 0
    max_models: int | None = None
    random: bool = False
    check: Callable[[list, dict], None] | None = None
    title: str = ""
    reference: str = ""
    calling: str = "float32"
    native: Callable[..., torch.Tensor] | None = None
    finite_inputs: bool = False

    def __post_init__(self):
        if self.base not in BASE_POLICIES:
            raise ValueError(f"base must be one of {BASE_POLICIES}, got {self.base!r}")
        if self.calling not in CALLINGS:
            raise ValueError(f"{self.name}: calling must be one of {CALLINGS}, got {self.calling!r}")
        overlap = set(self.model_params) & set(self.global_params)
        if overlap:
            raise ValueError(f"{self.name}: parameters both per-model and global: {sorted(overlap)}")

    @property
    def needs_base(self) -> bool:
        return self.base == "required"

    @property
    def uses_base(self) -> bool:
        return self.base != "ignored"

    def unknown(self, params: Sequence[Mapping[str, Any]] = (), global_params: Mapping[str, Any] | None = None) -> list[str]:
        """Names given that this method does not read (mergekit ignores them silently)."""
        names = {k for p in params for k in p if k not in self.model_params}
        names |= {k for k in (global_params or {}) if k not in self.global_params}
        return sorted(names)


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"merge method {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def method(name: str, **spec_fields: Any) -> Callable:
    """Decorator: register ``fn`` as method ``name`` with the given MethodSpec fields."""

    def wrap(fn):
        fields = dict(spec_fields)
        if fields.get("native") is True:  # the one implementation also computes in half precision, as mergekit
            fields["native"] = fn
        register(MethodSpec(name=name, fn=fn, **fields))
        return fn

    return wrap


def get_method(name: str | MethodSpec) -> MethodSpec:
    if isinstance(name, MethodSpec):
        return name
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise RecipeError(f"unknown merge method {name!r}; known methods: {', '.join(sorted(REGISTRY))}") from None


def validate_params(
    method: str | MethodSpec,
    params: Sequence[Mapping[str, Any]] = (),
    global_params: Mapping[str, Any] | None = None,
    *,
    unknown: str = "error",
) -> tuple[list[dict], dict]:
    """Check types and ranges, fill in defaults; return (per-model params, global params).

    ``params`` has one mapping per model input (see the module docstring for which inputs count).
    ``unknown="error"`` rejects names the method does not read; ``"ignore"`` drops them (use
    ``MethodSpec.unknown`` first to warn about them).
    """
    spec = get_method(method)
    if unknown not in ("error", "ignore"):
        raise ValueError("unknown must be 'error' or 'ignore'")
    global_params = dict(global_params or {})
    if unknown == "error":
        for name in spec.unknown(params, global_params):
            if name in spec.global_params:
                raise RecipeError(f"{spec.name}: parameter `{name}` is global; set it once for the merge, not per model")
            if name in spec.model_params:
                raise RecipeError(f"{spec.name}: parameter `{name}` is per model; set it on each model (or as a default for all)")
            known = sorted({*spec.model_params, *spec.global_params})
            raise RecipeError(f"{spec.name}: unknown parameter `{name}`; known: {', '.join(known) or 'none'}")

    def resolve(schema: Mapping[str, Param], given: Mapping[str, Any], who: str) -> dict:
        out = {}
        for pname, p in schema.items():
            if given.get(pname) is None and not (p.nullable and pname in given):
                if p.required:
                    raise RecipeError(f"{spec.name}: parameter `{pname}` is required{who}")
                out[pname] = p.default
            else:
                out[pname] = p.coerce(spec.name, pname, given[pname])
        return out

    resolved = [resolve(spec.model_params, p, f" for model {i}") for i, p in enumerate(params)]
    resolved_global = resolve(spec.global_params, global_params, "")
    if spec.check is not None:
        spec.check(resolved, resolved_global)
    return resolved, resolved_global


def check_inputs(method: str | MethodSpec, n_models: int, has_base: bool) -> MethodSpec:
    """Check the number of inputs and the base model against the method's contract."""
    spec = get_method(method)
    if spec.needs_base and not has_base:
        raise RecipeError(f"{spec.name} needs a base_model")
    if has_base and not spec.uses_base:
        raise ValueError(f"{spec.name} ignores base models: pass the base model's tensor as an ordinary input")
    if n_models < spec.min_models or (spec.max_models is not None and n_models > spec.max_models):
        if spec.max_models == spec.min_models:
            want = f"exactly {spec.min_models}"
        elif spec.max_models is None:
            want = f"at least {spec.min_models}"
        else:
            want = f"{spec.min_models} to {spec.max_models}"
        what = "input models" if not spec.uses_base else "models besides the base model"
        raise RecipeError(f"{spec.name} needs {want} {what}, got {n_models}")
    return spec


def compute_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """float32, or float64 when an input is float64: what the methods compute in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def merge_tensor(
    method: str | MethodSpec,
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    params: Sequence[Mapping[str, Any]] | None = None,
    global_params: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    *,
    unknown: str = "error",
    out_dtype: torch.dtype | None = None,
    native_dtype: torch.dtype | None = None,
    name: str | None = None,
    input_names: Sequence[str] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge one output tensor: validate, compute in float32 (float64 if an input is), return that dtype
    (or ``out_dtype``: the same values, rounded once). ``name``: the tensor's name, and ``input_names``: each
    input's own name where they differ (layers renumbered by slices), for "named" methods.
    ``native_dtype``: half precision that a method with a ``native`` function computes in, as mergekit does.

    ``out``: a tensor of the result's shape and dtype that a "streaming" method writes the result into (an
    output file's own pages), returned; other methods' result is copied into it.

    ``params=None`` means no per-model parameters given. Non-floating tensors (integer buffers) are
    copied when all inputs agree, as mergekit does, and rejected otherwise.
    """
    spec = check_inputs(method, len(tensors), base is not None)
    if params is None:
        params = [{} for _ in tensors]
    if len(params) != len(tensors):
        raise ValueError(f"{spec.name}: {len(tensors)} tensors but {len(params)} parameter dicts")
    params, global_params = validate_params(spec, params, global_params, unknown=unknown)
    everything = list(tensors) + ([base] if base is not None else [])
    if not everything:
        raise RecipeError(f"{spec.name} got no input tensors")
    shape = everything[0].shape
    if any(t.shape != shape for t in everything):
        raise ShapeMismatchError(f"{spec.name}: input shapes differ: {[tuple(t.shape) for t in everything]}")
    if not all(t.is_floating_point() for t in everything):
        first = everything[0]
        if all(t.dtype == first.dtype and torch.equal(t, first) for t in everything[1:]):
            return first.clone()
        what = f"tensor {name} ({str(first.dtype).removeprefix('torch.')})" if name else "a non-floating tensor"
        raise RecipeError(f"{spec.name}: {what} differs between inputs and, not being floating point, cannot be "
                          f"merged")
    if spec.finite_inputs:
        bad = _non_finite_input(spec.name, everything, has_base=base is not None)
        if bad is not None:
            raise bad
    with torch.no_grad(), _naming_non_finite(spec.name, everything, has_base=base is not None):
        result = call_method(spec, tensors, base, params, global_params, generator, out_dtype=out_dtype,
                             native_dtype=native_dtype, name=name, input_names=input_names, out=out)
    return _into(out, result if out_dtype is None else result.to(out_dtype))


def call_method(spec: MethodSpec, tensors: Sequence[torch.Tensor], base: torch.Tensor | None, params: list[dict],
                global_params: dict, generator: torch.Generator | None, *, out_dtype: torch.dtype | None = None,
                native_dtype: torch.dtype | None = None, name: str | None = None,
                input_names: Sequence[str] | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Call the method's function as its ``calling`` says, on validated parameters: its ``native`` function on the
    inputs in ``native_dtype`` where it has one, else ``fn`` on inputs in the compute dtype (or as they come, for
    a "streaming" method)."""
    native = native_dtype is not None and spec.native is not None  # mergekit's half-precision arithmetic
    dtype = native_dtype if native else compute_dtype([*tensors, *([base] if base is not None else [])])
    fn = spec.native if native else spec.fn
    if spec.calling != "streaming" or native:
        tensors = [t.to(dtype) for t in tensors]
    base = base.to(dtype) if base is not None else None
    if spec.calling == "named":
        return fn(tensors, base, params, global_params, generator, name=name, input_names=input_names)
    if spec.calling == "streaming":
        in_place = {"out": out} if out is not None else {}
        if native:  # it takes no out_dtype: merge_tensor casts its result once
            return fn(tensors, base, params, global_params, generator, **in_place)
        return fn(list(tensors), base, params, global_params, generator, out_dtype=out_dtype or dtype, **in_place)
    return fn(tensors, base, params, global_params, generator)


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    """`result`, in `out` when one is given (a method that wrote it in place returned it)."""
    if out is None or result is out:
        return result
    return pages.copy(out, result)


@contextlib.contextmanager
def _naming_non_finite(method: str, everything: Sequence[torch.Tensor], *, has_base: bool):
    """A method that fails may have failed on NaN/inf in an input (TIES cannot rank them): then the error is
    NonFiniteError naming that input, not the method's IndexError."""
    try:
        yield
    except RecipeError:
        raise
    except Exception as e:
        bad = _non_finite_input(method, everything, has_base=has_base)
        if bad is None:
            raise
        raise bad from e


def _non_finite_input(method: str, everything: Sequence[torch.Tensor], *, has_base: bool):
    """The error naming the first input that holds NaN/inf, else None (looked for after a failure, or first for
    the `finite_inputs` methods: a healthy merge never pays for it)."""
    for i, t in enumerate(everything):
        n = int((~torch.isfinite(t)).sum())
        if n:
            who = "the base model" if has_base and i == len(everything) - 1 else f"input {i}"
            return NonFiniteError(f"{method}: {who} holds {n} non-finite value(s) (NaN/inf)")
    return None
