"""Merge methods against mergekit 0.1.5 itself: same tensors, same parameters, same result.

mergekit's own per-tensor entry point (`mergekit.merge_methods.merge_tensors`, which runs each method's
kernel on one group of tensors) is the oracle. Inputs are laid out the way mergekit's planner does:
the models in order, then the base model appended at the end.
"""

import pytest
import torch

from mergekit_oracle import SHAPES, TOL, W, WD, assert_matches, make_inputs, mergekit_result
from mmmerge.methods import merge_tensor

# (method, number of models, uses base, per-model params, global params)
DETERMINISTIC = [
    ("linear", 3, False, W(0.2, 0.5, 1.0), {}),
    ("linear", 3, False, W(0.2, -0.5, 1.0), {"normalize": False}),
    ("linear", 1, False, W(0.7), {}),
    ("task_arithmetic", 3, True, W(0.2, 0.5, 1.0), {}),
    ("task_arithmetic", 2, True, W(1.0, -0.6), {"normalize": True, "lambda": 0.5}),
    ("ties", 3, True, WD([(0.2, 0.3), (0.5, 0.5), (1.0, 0.9)]), {}),
    ("ties", 3, True, WD([(1.0, 0.2), (-0.5, 0.7), (0.8, 1.0)]), {"normalize": False, "lambda": 1.3}),
    ("ties", 2, True, WD([(1.0, 0.5), (1.0, 0.5)]), {"rescale": True}),
    ("ties", 2, True, W(0.3, 0.9), {}),  # density defaults to 1
    ("breadcrumbs", 3, True, WD([(0.2, 0.3), (0.5, 0.5), (1.0, 0.9)]), {}),
    ("breadcrumbs", 2, True, WD([(1.0, 0.5), (0.5, 0.95)], gamma=0.1), {"normalize": True, "rescale": True}),
    ("breadcrumbs_ties", 3, True, WD([(0.2, 0.3), (0.5, 0.5), (1.0, 0.9)], gamma=0.05), {"lambda": 0.7}),
    ("breadcrumbs_ties", 2, True, WD([(1.0, 0.6), (1.0, 0.6)], gamma=0.0), {"normalize": True}),
    ("slerp", 1, True, [{}], {"t": 0.3}),
    ("slerp", 1, True, [{}], {"t": 0.9}),
    ("nuslerp", 2, True, W(0.3, 0.9), {}),
    ("nuslerp", 2, False, W(0.3, 0.9), {}),
    ("nuslerp", 2, False, W(1.0, 2.0), {"nuslerp_flatten": False}),
    ("nuslerp", 2, True, W(1.0, 2.0), {"nuslerp_flatten": False, "nuslerp_row_wise": True}),
    ("nuslerp", 2, False, W(1.0, -1.0), {}),  # weights sum to 0: t = 0.5
    ("multislerp", 3, True, W(0.2, 0.5, 1.0), {}),
    ("multislerp", 3, False, W(0.2, 0.5, 1.0), {}),
    ("multislerp", 2, True, W(0.3, 0.3), {"normalize_weights": False, "eps": 1e-6}),
    ("karcher", 2, False, [{}] * 2, {}),
    ("karcher", 4, False, [{}] * 4, {"max_iter": 3, "tol": 1e-6}),
    ("nearswap", 1, True, [{}], {"t": 0.01}),
    ("nearswap", 1, True, [{}], {"t": 0.1}),
    ("model_stock", 2, True, [{}] * 2, {}),
    ("model_stock", 3, True, [{}] * 3, {"filter_wise": True}),
    ("sce", 3, True, [{}] * 3, {}),
    ("sce", 3, True, [{}] * 3, {"select_topk": 0.3}),
    ("sce", 2, True, [{}] * 2, {"select_topk": 0.05, "int8_mask": True}),
    ("ram", 3, True, [{}] * 3, {}),
    ("ram", 3, True, [{}] * 3, {"epsilon": 0.04}),
    ("ramplus_tl", 3, True, [{}] * 3, {}),
    ("ramplus_tl", 3, True, [{}] * 3, {"epsilon": 0.04, "r": 0.5, "alpha": 0.8}),
    ("arcee_fusion", 1, True, [{}], {}),
    ("passthrough", 1, False, [{"scale": 2.5}], {}),
    ("passthrough", 1, False, [{}], {}),
]


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize(
    "case", DETERMINISTIC, ids=[f"{c[0]}-{i}" for i, c in enumerate(DETERMINISTIC)]
)
def test_deterministic_methods_match_mergekit(case, shape):
    name, n, uses_base, params, global_params = case
    models, base = make_inputs(shape, n, seed=len(params) + len(shape))
    if not uses_base:
        models = models[:-1] + [base] if n > 1 else models  # the base model as an ordinary input
        base = None
    _, change = assert_matches(name, models, base, params, global_params)
    if len(models) + (base is not None) > 1 or params[0].get("scale"):  # else the input is the right answer
        assert change > 1e-4


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_slerp_edge_cases_match_mergekit(shape):
    _, base = make_inputs(shape, 0)
    for other in (2 * base, -3 * base, base + 1e-4):  # collinear, antipodal, nearly equal: lerp fallback
        for t in (0.0, 0.25, 1.0):
            assert_matches("slerp", [other], base, [{}], {"t": t})
    got, _ = assert_matches("slerp", [2 * base], base, [{}], {"t": 0.25})
    assert torch.allclose(got, 1.25 * base)
    orthogonal = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    assert_matches("slerp", [orthogonal], base, [{}], {"t": 0.5})
    assert_matches("slerp", [torch.zeros(shape)], base, [{}], {"t": 0.5})  # zero norm is left unnormalised


def test_multislerp_and_karcher_edge_cases_match_mergekit():
    models, base = make_inputs((40, 8), 3)
    # one model is returned as it is, base or not
    assert torch.equal(merge_tensor("multislerp", models[:1], base, W(1.0)), models[0])
    assert_matches("multislerp", models[:1], base, W(1.0), {})
    # antipodal pair with balancing weights: linear fallback
    assert_matches("multislerp", [base, -base], None, W(0.5, 0.5), {})
    # karcher: a zero input, identical inputs, all-zero inputs
    assert_matches("karcher", [base, torch.zeros_like(base), models[0]], None, [{}] * 3, {})
    assert_matches("karcher", [base, base.clone()], None, [{}] * 2, {})
    got = merge_tensor("karcher", [torch.zeros(5), torch.zeros(5)], None, [{}] * 2)
    assert torch.equal(got, mergekit_result("karcher", [torch.zeros(5), torch.zeros(5)], None, [{}] * 2, {}))


def test_model_stock_singular_and_task_vector_edge_cases_match_mergekit():
    models, base = make_inputs((16, 8), 2)
    delta = models[0] - base
    # opposite task vectors: cos = -1, denominator 0, the base is kept
    assert_matches("model_stock", [base + delta, base - delta], base, [{}] * 2, {})
    # no models besides the base: base returned
    for name in ("task_arithmetic", "ties", "sce", "ram", "ramplus_tl"):
        assert torch.equal(merge_tensor(name, [], base, []), base)
    # all deltas zero: consensus divisor is 0 -> 1
    assert_matches("ties", [base.clone(), base.clone()], base, WD([(1, 0.5), (1, 0.5)]), {})
    assert_matches("sce", [base.clone(), base.clone()], base, [{}] * 2, {"select_topk": 0.5})
    assert_matches("ramplus_tl", [base.clone(), models[0]], base, [{}] * 2, {})


def test_model_order_matters_like_mergekit():
    models, base = make_inputs((30, 10), 3)
    for name, params in (("ties", WD([(1.0, 0.3), (0.2, 0.8), (0.6, 0.5)])), ("nuslerp", W(0.2, 0.8))):
        k = len(params)
        forward, _ = assert_matches(name, models[:k], base, params, {})
        backward, _ = assert_matches(name, models[:k][::-1], base, params[::-1], {})
        assert torch.allclose(forward, backward, atol=1e-5)  # same pairing of tensor and parameters
        swapped, _ = assert_matches(name, models[:k][::-1], base, params, {})
        assert not torch.allclose(forward, swapped, atol=1e-4)


@pytest.mark.parametrize("name", ["ties", "dare_ties", "breadcrumbs_ties", "della", "sce"])
def test_sign_election_tie_goes_to_plus_like_mergekit(name):
    g = torch.Generator().manual_seed(4)
    base = torch.randint(-8, 8, (12, 10), generator=g).float()
    d = torch.randint(1, 4, (12, 10), generator=g).float() / 4  # exact in float32: +d and -d cancel exactly
    params = [{}, {}] if name == "sce" else WD([(1.0, 1.0), (1.0, 1.0)])
    got, _ = assert_matches(name, [base + d, base - d], base, params, {}, seed=0)
    assert torch.equal(got, base + d)  # the elected sign is + where the sum is 0


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_tiny_density_keeps_at_least_one_entry_like_mergekit(shape):
    models, base = make_inputs(shape, 2, unchanged=0.0)
    got, change = assert_matches("ties", models, base, WD([(1.0, 0.005), (0.5, 0.005)]), {})
    assert change > 0
    assert_matches("breadcrumbs", models, base, WD([(1.0, 0.005), (0.5, 0.5)]), {})


def test_slerp_threshold_and_karcher_iterations_match_mergekit():
    g = torch.Generator().manual_seed(8)
    base = torch.randn(400, generator=g)
    for scale in (0.015, 0.03, 0.05):  # |cos| just above and just below the 0.9995 lerp threshold
        assert_matches("slerp", [base + scale * torch.randn(400, generator=g)], base, [{}], {"t": 0.4})
    independent = [torch.randn(20, 30, generator=g) for _ in range(3)]  # wide angles: several iterations
    for global_params in ({}, {"max_iter": 2}, {"max_iter": 50, "tol": 1e-7}):
        assert_matches("karcher", independent, None, [{}] * 3, global_params)


def test_zero_and_tiny_task_vectors_match_mergekit():
    models, base = make_inputs((20, 12), 3)
    same = base.clone()
    assert_matches("nuslerp", [same, models[0]], base, W(0.5, 0.5), {})  # a zero task vector
    assert_matches("nuslerp", [same, models[0]], base, W(0.5, 0.5), {"nuslerp_flatten": False})
    assert_matches("model_stock", [same, models[0], models[1]], base, [{}] * 3, {})
    tiny = [base + (m - base) * 1e-3 for m in models]  # task-vector energy sums below 1e-6: uniform weights
    got, change = assert_matches("sce", tiny, base, [{}] * 3, {})
    assert change > 1e-6
    # ram counts |delta| > epsilon strictly: deltas exactly at epsilon do not contribute
    g = torch.Generator().manual_seed(2)
    exact = torch.randint(-4, 4, (10, 10), generator=g).float()
    steps = [exact + torch.randint(-2, 3, (10, 10), generator=g).float() / 4 for _ in range(3)]
    for name in ("ram", "ramplus_tl"):
        assert_matches(name, steps, exact, [{}] * 3, {"epsilon": 0.25})


SLICED_CASES = [c for c in DETERMINISTIC if c[0] in ("linear", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties")]


@pytest.mark.parametrize("half", [False, True], ids=["float32", "bf16-inputs"])
@pytest.mark.parametrize("case", SLICED_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(SLICED_CASES)])
def test_slice_wise_methods_on_large_tensors_match_mergekit(case, half, monkeypatch):
    """Large tensors take the radix selection and are merged in slices (made small and odd here, so the
    pruning cut and the tie position fall inside slices); bf16 inputs are widened by the method itself."""
    from mmmerge.methods import _common

    monkeypatch.setattr(_common, "CHUNK", 10007)
    name, n, uses_base, params, global_params = case
    models, base = make_inputs((300, 320), n, seed=5)
    if not uses_base:
        models, base = models + [base], None
        params = params + params[:1]
    if half:
        models = [m.bfloat16() for m in models]
    expected = mergekit_result(name, [m.float() for m in models], base, params, global_params)
    if name not in ("linear", "task_arithmetic"):  # equal magnitudes at the cut: mergekit's own sort's choice
        global_params = {**global_params, "tie_break": "sort"}
    got = merge_tensor(name, models, base, params, global_params)
    assert got.dtype == torch.float32 and (got - expected).abs().max().item() <= TOL
    # written straight in the output dtype: the float32 result rounded once
    assert torch.equal(merge_tensor(name, models, base, params, global_params, out_dtype=torch.bfloat16),
                       got.bfloat16())
