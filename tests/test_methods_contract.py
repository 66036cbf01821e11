"""Every registered merge method against the registry's contract, as timm's tests run over its model registry:
a well-formed schema, shape and dtype rules, determinism for a seed, and a model merged with itself.

Adding a method (one file in mmmerge/methods/) puts it under these tests with nothing else to write. The
methods' values are proven elsewhere (mergekit as the oracle in test_methods*.py, re-derivations in
test_methods_datafree.py / test_methods_dataaware.py / test_methods_wudi.py); here only the contract.
"""

import inspect
import re

import pytest
import torch

from mergekit_oracle import mergekit_result
from mmmerge.methods import REGISTRY, REQUIRED, merge_tensor

METHODS = sorted(REGISTRY)
SHAPE = (8, 6)
# methods with no paper to cite: what they are instead
NO_REFERENCE = {"passthrough": "copies a tensor", "nuslerp": "mergekit's own form of slerp"}


def value_for(p):
    """A valid value for a required parameter: the middle of its interval, else 0.5 (or 1 for an int)."""
    if p.low is not None and p.high is not None:
        return p.type((p.low + p.high) / 2)
    return 1 if p.type is int else 0.5


def arguments(spec, dtype=torch.float32, seed=0, same=False, **given):
    """(tensors, base, per-model params, global params) for `spec`: as many models as it takes (2 where it takes
    more than one), a base where it uses one; `same`: every input is the same tensor (a model with itself)."""
    n = max(spec.min_models, 2) if spec.max_models is None else min(max(spec.min_models, 2), spec.max_models)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    models = [x.clone() if same else x + 0.1 * torch.randn(SHAPE, generator=g) for _ in range(n)]
    base = x.clone() if spec.uses_base else None

    def filled(schema):
        return {k: given.get(k, value_for(p)) for k, p in schema.items() if p.required or k in given}

    params = [filled(spec.model_params) for _ in models]
    cast = (lambda t: t.to(dtype)) if dtype != torch.float32 else (lambda t: t)
    return [cast(t) for t in models], None if base is None else cast(base), params, filled(spec.global_params)


def merge(spec, args, seed=1, **kw):
    tensors, base, params, global_params = args
    return merge_tensor(spec, tensors, base, params, global_params, torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("name", METHODS)
def test_schema_is_well_formed(name):
    spec = REGISTRY[name]
    assert spec.name == name and callable(spec.fn)
    assert spec.min_models >= 0 and (spec.max_models is None or spec.max_models >= max(spec.min_models, 1))
    assert spec.reference.strip() or name in NO_REFERENCE, f"{name}: no reference (paper) for `mmmerge methods`"
    assert spec.title.strip() and "\n" not in spec.title, f"{name}: no one-line title for the model card"
    for pname, p in {**spec.model_params, **spec.global_params}.items():
        where = f"{name}.{pname}"
        assert p.type in (float, int, bool, str), where
        assert p.help.strip() and "\n" not in p.help, f"{where}: no one-line help text"
        if p.low is not None and p.high is not None:
            assert p.low <= p.high, where
        if p.type is bool:
            assert p.low is None and p.high is None, where
        if p.default is REQUIRED:
            continue
        if p.default is None:
            assert p.nullable, f"{where}: default None but not nullable"
            continue
        assert type(p.default) is p.type, f"{where}: default {p.default!r} is not a {p.type.__name__}"
        assert p.coerce(name, pname, p.default) == p.default, f"{where}: default outside {p.range_text()}"


@pytest.mark.parametrize("name", METHODS)
def test_defaults_run_keep_shape_and_give_float32(name):
    spec = REGISTRY[name]
    out = merge(spec, arguments(spec))
    assert out.shape == SHAPE and out.dtype == torch.float32 and torch.isfinite(out).all()
    # half-precision inputs are computed in float32 unless a dtype is asked for
    assert merge(spec, arguments(spec, torch.bfloat16)).dtype == torch.float32
    assert merge(spec, arguments(spec), out_dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("name", [n for n in METHODS if REGISTRY[n].native is not None])
def test_native_bf16_computation_returns_bf16(name):
    spec = REGISTRY[name]
    args = arguments(spec, torch.bfloat16)
    out = merge(spec, args, native_dtype=torch.bfloat16, out_dtype=torch.bfloat16)
    assert out.shape == SHAPE and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # without out_dtype the kernel's own dtype comes back, the one mergekit's arithmetic gives on the same bf16
    # inputs (float32 where it promotes, as arcee_fusion's float32 mask does); the executor rounds it once
    # (its values against mergekit's bf16 arithmetic: tests/test_methods_native.py)
    tensors, base, params, global_params = args
    theirs = mergekit_result(name, tensors, base, params, global_params).dtype
    assert merge(spec, args, native_dtype=torch.bfloat16).dtype == theirs


@pytest.mark.parametrize("name", METHODS)
def test_results_are_deterministic(name):
    spec = REGISTRY[name]
    given = {"density": 0.5} if spec.random and "density" in spec.model_params else {}
    args = arguments(spec, **given)
    first = merge(spec, args, seed=1)
    assert torch.equal(first, merge(spec, args, seed=1)), "same inputs (and seed) must give the same bits"
    if given:  # the generator is what decides which entries are dropped
        assert not torch.equal(first, merge(spec, args, seed=2)), "a random method ignores its generator"


@pytest.mark.parametrize("name", METHODS)
def test_a_model_merged_with_itself_is_itself(name):
    spec = REGISTRY[name]
    args = arguments(spec, same=True)
    x = args[0][0]
    torch.testing.assert_close(merge(spec, args), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_defaults_live_in_the_schema_alone(name):
    """A method reads its parameters as validated (every default filled in from its schema): a default restated in
    its body (`global_params.get("eps", 1e-8)`) could drift from the schema's unseen."""
    spec = REGISTRY[name]
    for fn in {spec.fn, spec.native} - {None}:
        restated = re.findall(r"params\.get\(\"(\w+)\"", inspect.getsource(fn))
        assert not restated, f"{name}: reads {restated} with .get(); read params[...] (the schema fills defaults)"
