"""Half-precision merges computed as mergekit 0.1.5 computes them: for bf16 and fp16 inputs every task-vector
method gives mergekit's tensor bit for bit (random ones for the same seed), computed over cache-sized slices
with a histogram selection instead of a sort. Equal magnitudes at the TIES/breadcrumbs cut: `tie_break: sort`
is mergekit's own argsort; the default, index order, is mergekit with a stable sort."""

import contextlib

import pytest
import torch
from mergekit.merge_methods import merge_tensors as mergekit_merge_tensors

from mmmerge.methods import _common, merge_tensor
from mergekit_oracle import magnitude_sorts_stable, make_inputs

CASES = {
    "task_arithmetic": ({}, {"lambda": 0.7}),
    "ties": ({"density": 0.4}, {}),
    "dare_ties": ({"density": 0.5}, {}),
    "dare_linear": ({"density": 0.6}, {}),
    "breadcrumbs": ({"density": 0.7, "gamma": 0.05}, {}),
    "breadcrumbs_ties": ({"density": 0.7, "gamma": 0.05}, {"int8_mask": True}),
    "della": ({"density": 0.5, "epsilon": 0.1}, {}),
    "della_linear": ({"density": 0.5, "epsilon": 0.1}, {"lambda": 1.3}),
}
SORTING = ("ties", "breadcrumbs", "breadcrumbs_ties")


def adversarial(kind, shape, dtype, n=3, seed=7):
    """A base and n fine-tunes in `dtype`: plain random; 'ties' (task vectors of a few magnitudes, most of them
    equal at any cut); 'zeros' (half the entries unchanged, the base holding -0.0); 'subnormal' (task vectors
    below the normal range); 'wide' (magnitudes over 30 orders, cancelling between models)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    models = []
    for i in range(n):
        d = torch.randn(shape, generator=g) * 0.002 * (1 + i)
        if kind == "ties":
            d = torch.randint(-3, 4, shape, generator=g).float() * 2**-10
        elif kind == "zeros":
            d[torch.rand(shape, generator=g) < 0.5] = 0
        elif kind == "subnormal":
            d = d * (1e-36 if dtype == torch.bfloat16 else 1e-3)
        elif kind == "wide":
            span = 3 if dtype == torch.float16 else 15  # float16 ends at 65504
            scales = torch.logspace(-span, span, d.numel())[torch.randperm(d.numel(), generator=g)]
            d = d * scales.reshape(shape) * (-1) ** i
        models.append((base + d).to(dtype))
    base = base.to(dtype)
    if kind == "zeros":
        base.view(-1)[::7] = -0.0
    return models, base


def mergekits(name, models, base, params, global_params, *, stable=False):
    parameters = dict(global_params)
    for key in {k for p in params for k in p}:
        parameters[key] = [p[key] for p in params]
    torch.manual_seed(11)
    with magnitude_sorts_stable() if stable else contextlib.nullcontext():
        return mergekit_merge_tensors(models + [base], name, parameters=parameters, base_index=len(models))


def bits(t):
    return t.view(torch.int16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_half_precision_is_mergekits_bit_for_bit(name, dtype, monkeypatch):
    per_model, global_params = CASES[name]
    monkeypatch.setattr(_common, "CHUNK", 1024)  # many slices, the last one partial
    for kind, shape in [("random", (48, 80)), ("ties", (61, 97)), ("zeros", (5, 7, 33)), ("subnormal", (300,)),
                        ("wide", (40, 50))]:
        models, base = adversarial(kind, shape, dtype)
        params = [{**per_model, "weight": w} for w in (0.5, -0.3, 0.9)]
        for tie_break in (["sort", "index"] if name in SORTING else [None]):
            extra = {"tie_break": tie_break} if tie_break else {}
            theirs = mergekits(name, models, base, params, global_params, stable=tie_break == "index")
            ours = merge_tensor(name, models, base, params, {**global_params, **extra},
                                torch.Generator().manual_seed(11), native_dtype=dtype, out_dtype=dtype)
            assert theirs.dtype == ours.dtype == dtype
            assert torch.equal(bits(ours), bits(theirs)), (kind, tie_break)


@pytest.mark.parametrize("name", SORTING)
def test_equal_magnitudes_at_the_cut_are_what_tells_the_tie_breaks_apart(name):
    per_model, global_params = CASES[name]
    models, base = adversarial("ties", (61, 97), torch.bfloat16)
    params = [{**per_model, "weight": w} for w in (0.5, 0.3, 0.9)]
    got = {tb: merge_tensor(name, models, base, params, {**global_params, "tie_break": tb},
                            native_dtype=torch.bfloat16) for tb in ("index", "sort")}
    assert not torch.equal(got["index"], got["sort"])
    models, base = adversarial("random", (61, 97), torch.float32)  # distinct magnitudes: no choice to make
    same = {tb: merge_tensor(name, models, base, params, {**global_params, "tie_break": tb}) for tb in ("index", "sort")}
    assert torch.equal(same["index"], same["sort"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_inputs_are_mergekits_too(name, monkeypatch):
    """One implementation: computing in float32 (float32 inputs, or `compute_dtype: float32`) is mergekit's
    float32 arithmetic, operation by operation."""
    per_model, global_params = CASES[name]
    monkeypatch.setattr(_common, "CHUNK", 1024)
    models, base = adversarial("wide", (48, 80), torch.float32)
    params = [{**per_model, "weight": w} for w in (0.5, 0.3, 0.9)]
    extra = {"tie_break": "sort"} if name in SORTING else {}
    theirs = mergekits(name, models, base, params, global_params)
    ours = merge_tensor(name, models, base, params, {**global_params, **extra}, torch.Generator().manual_seed(11))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "della"])
def test_float32_arithmetic_rounds_elsewhere(name):
    """`compute_dtype: float32` on half-precision inputs is not mergekit's half-precision result: the test above
    can fail."""
    per_model, global_params = CASES[name]
    models, base = make_inputs((48, 80), 3, seed=7)
    models, base = [m.to(torch.bfloat16) for m in models], base.to(torch.bfloat16)
    params = [{**per_model, "weight": w} for w in (0.5, 0.3, 0.9)]
    half = merge_tensor(name, models, base, params, global_params, torch.Generator().manual_seed(11),
                        native_dtype=torch.bfloat16)
    wide = merge_tensor(name, models, base, params, global_params, torch.Generator().manual_seed(11),
                        out_dtype=torch.bfloat16)
    assert not torch.equal(wide, half)


# method: (non-base models, base given, per-model parameters, global parameters)
OTHERS = {
    "slerp": (1, True, {}, {"t": 0.3}),
    "model_stock": (3, True, {}, {}),
    "sce": (3, True, {}, {"select_topk": 0.5}),
    "nearswap": (1, True, {}, {"t": 0.01}),
    "nuslerp": (2, True, {"weight": None}, {}),
    "multislerp": (3, True, {"weight": None}, {}),
    "karcher": (3, False, {}, {}),
    "ram": (2, True, {}, {}),
    "ramplus_tl": (3, True, {}, {}),
    "arcee_fusion": (1, True, {}, {}),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_methods_in_half_precision_are_mergekits(name, dtype):
    n, has_base, per_model, global_params = OTHERS[name]
    models, base = make_inputs((48, 80), n, seed=3)
    models, base = [m.to(dtype) for m in models], base.to(dtype)
    params = [{k: 0.3 + 0.2 * i for k in per_model} for i in range(n)]
    parameters = dict(global_params)
    for key in per_model:
        parameters[key] = [p[key] for p in params]
    inputs = models + ([base] if has_base else [])
    theirs = mergekit_merge_tensors(inputs, name, parameters=parameters, base_index=n if has_base else None)
    ours = merge_tensor(name, models, base if has_base else None, params, global_params, native_dtype=dtype,
                        out_dtype=dtype)
    # float32 intermediates (arcee_fusion's mask, ramplus_tl's boost) make mergekit's result float32; mmmerge
    # rounds it to the output dtype like every other tensor
    assert torch.equal(ours, theirs.to(dtype))
    assert name in ("arcee_fusion", "ramplus_tl") or theirs.dtype == dtype
