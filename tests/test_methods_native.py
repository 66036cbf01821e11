"""Half-precision merges computed as mergekit 0.1.5 computes them: for bf16 and fp16 inputs, every task-vector
method gives mergekit's tensor bit for bit (random ones for the same seed), where the float32 kernels would
round differently."""

import pytest
import torch
from mergekit.merge_methods import merge_tensors as mergekit_merge_tensors

from mmmerge.methods import merge_tensor
from test_methods import make_inputs

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
