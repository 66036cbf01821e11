"""Half-precision merges computed as mergekit 0.1.5 computes them: for bf16 and fp16 inputs, every task-vector
method gives mergekit's tensor bit for bit (random ones for the same seed), where the float32 kernels would
round differently."""

import pytest
import torch
from mergekit.merge_methods import merge_tensors as mergekit_merge_tensors

from mmmerge.methods import merge_tensor
from mergekit_oracle import make_inputs

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_native_half_precision_is_mergekits_bit_for_bit(name, dtype):
    per_model, global_params = CASES[name]
    models, base = make_inputs((48, 80), 3, seed=7)
    models, base = [m.to(dtype) for m in models], base.to(dtype)
    params = [{**per_model, "weight": w} for w in (0.5, 0.3, 0.9)]
    parameters = dict(global_params)
    for key in {k for p in params for k in p}:
        parameters[key] = [p[key] for p in params]
    torch.manual_seed(11)
    theirs = mergekit_merge_tensors(models + [base], name, parameters=parameters, base_index=len(models))
    ours = merge_tensor(name, models, base, params, global_params, torch.Generator().manual_seed(11),
                        native_dtype=dtype, out_dtype=dtype)
    assert theirs.dtype == ours.dtype == dtype
    assert torch.equal(ours, theirs)
    wide = merge_tensor(name, models, base, params, global_params, torch.Generator().manual_seed(11), out_dtype=dtype)
    if name in ("task_arithmetic", "ties", "della"):  # the test can fail: float32 math rounds elsewhere
        assert not torch.equal(wide, theirs)


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
