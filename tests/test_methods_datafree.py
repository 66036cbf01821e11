"""tsv_merge, iso_c, iso_cts: checked against independent numpy/float64 re-derivations of the papers'
equations (eigendecomposition-based orthogonalisation, nuclear norm, a different stacking order) and
against structural properties a wrong implementation would break."""

import numpy as np
import pytest
import torch

from mmmerge.errors import RecipeError
from mmmerge.methods import REGISTRY, merge_tensor
from mmmerge.methods.iso import subspace_sizes
from mmmerge.methods.tsv import tsv_components

NAMES = ["tsv_merge", "iso_c", "iso_cts"]
TOL = 1e-5


# ---------------------------------------------------------------- numpy re-derivations (float64)


def orth_columns(a):
    """A (AᵀA)^(-1/2): the orthogonal polar factor of a full-column-rank matrix, via eigh."""
    w, q = np.linalg.eigh(a.T @ a)
    return a @ (q * w**-0.5) @ q.T


def orth_rows(a):
    return orth_columns(a.T).T


def polar(a):
    return orth_columns(a) if a.shape[0] >= a.shape[1] else orth_rows(a)


def np_tsv(deltas, fraction, alpha):
    r = min(deltas[0].shape)
    k = int(np.floor(r * fraction))
    us, ss, vs = [], [], []
    for d in deltas:
        u, s, vt = np.linalg.svd(d, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vt[:k].T)
    u_hat, v_hat = orth_columns(np.hstack(us)), orth_columns(np.hstack(vs))
    return alpha * u_hat @ np.diag(np.concatenate(ss)) @ v_hat.T


def np_iso_c(deltas, alpha):
    total = sum(deltas)
    sigma_bar = np.linalg.norm(total, "nuc") / min(total.shape)
    return alpha * sigma_bar * polar(total)


def np_sizes(r, n_tasks, k):
    c0 = int(np.floor(r * k))
    specific = int(np.round((r - c0) / n_tasks)) * n_tasks  # numpy rounds half to even, like Python
    return r - specific, specific // n_tasks


def np_iso_cts(deltas, k, alpha):
    total = sum(deltas)
    c, d = np_sizes(min(total.shape), len(deltas), k)
    u, s, vt = np.linalg.svd(total)
    us, ss, vs = [u[:, :c]], [s[:c]], [vt[:c].T]  # common block first (the code puts it last)
    proj = u[:, :c] @ u[:, :c].T
    for delta in deltas:
        ui, si, vti = np.linalg.svd((np.eye(len(proj)) - proj) @ delta)
        us.append(ui[:, :d])
        ss.append(si[:d])
        vs.append(vti[:d].T)
    sigma_bar = np.concatenate(ss).mean()
    return alpha * sigma_bar * orth_columns(np.hstack(us)) @ orth_columns(np.hstack(vs)).T


# ---------------------------------------------------------------- fixtures


def make(shape, n_tasks, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    models = [base + 0.1 * torch.randn(tuple(shape), generator=g, dtype=torch.float64) for _ in range(n_tasks)]
    return base.to(dtype), [m.to(dtype) for m in models]


def deltas_np(base, models):
    return [(m - base).double().numpy() for m in models]


def merged_delta(name, base, models, **gp):
    return (merge_tensor(name, models, base, None, gp) - base).double().numpy()


SHAPES = {"tall": (14, 9), "wide": (9, 14), "square": (12, 12)}


# ---------------------------------------------------------------- (1) against the re-derivations


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("n_tasks", [1, 3])
def test_tsv_matches_numpy_rederivation(shape, n_tasks):
    base, models = make(shape, n_tasks)
    want = np_tsv(deltas_np(base, models), 1 / n_tasks, 0.7)
    np.testing.assert_allclose(merged_delta("tsv_merge", base, models, alpha=0.7), want, atol=TOL, rtol=0)
    # an explicit rank fraction below 1/T: k = ⌊9·0.2⌋ = 1 singular triplet per task
    want = np_tsv(deltas_np(base, models), 0.2, 1.0)
    np.testing.assert_allclose(merged_delta("tsv_merge", base, models, rank_fraction=0.2), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("n_tasks", [1, 3])
def test_iso_c_matches_numpy_rederivation(shape, n_tasks):
    base, models = make(shape, n_tasks, seed=1)
    want = np_iso_c(deltas_np(base, models), 1.3)
    np.testing.assert_allclose(merged_delta("iso_c", base, models, alpha=1.3), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("n_tasks,k", [(3, 0.8), (3, 0.5), (2, 0.3), (1, 0.8), (4, 0.0)])
def test_iso_cts_matches_numpy_rederivation(shape, n_tasks, k):
    base, models = make(shape, n_tasks, seed=2)
    c, d = np_sizes(min(shape), n_tasks, k)
    assert c >= 0 and c + n_tasks * d == min(shape)
    want = np_iso_cts(deltas_np(base, models), k, 0.9)
    got = merged_delta("iso_cts", base, models, alpha=0.9, common_space_fraction=k)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_float32_inputs_give_float32_close_to_float64():
    base, models = make((20, 16), 3, seed=3)
    base32, models32 = base.float(), [m.float() for m in models]
    for name in NAMES:
        out = merge_tensor(name, models32, base32)
        assert out.dtype == torch.float32 and out.shape == base.shape
        want = merge_tensor(name, models, base)
        torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=0)


def test_subspace_sizes_follow_the_reference_rounding():
    # c0 = ⌊r·k⌋, the task-specific total rounded (half to even) to a multiple of T, c takes the rest
    assert subspace_sizes(14, 9, 3, 0.8) == (6, 1)  # c0 = 7; round(2/3) = 1
    assert subspace_sizes(768, 768, 8, 0.8) == (616, 19)  # c0 = 614; round(154/8 = 19.25) = 19
    assert subspace_sizes(30, 40, 4, 0.8) == (22, 2)  # c0 = 24; round(1.5) = 2
    assert subspace_sizes(10, 10, 4, 0.8) == (10, 0)  # c0 = 8; round(0.5) = 0: no task-specific space
    assert subspace_sizes(8, 12, 3, 1.0) == (8, 0)
    # round(8/3) = 3 would need 9 > 8 directions (the reference code breaks): rounded down instead
    assert subspace_sizes(8, 12, 3, 0.0) == (2, 2)


# ---------------------------------------------------------------- (2) structural properties


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_iso_c_is_isotropic_and_keeps_the_summed_matrix_subspaces(shape):
    base, models = make(shape, 3, seed=4)
    total = sum(deltas_np(base, models))
    got = merged_delta("iso_c", base, models, alpha=2.0)
    s = np.linalg.svd(got, compute_uv=False)
    s_total = np.linalg.svd(total, compute_uv=False)
    np.testing.assert_allclose(s, np.full_like(s, 2.0 * s_total.mean()), atol=TOL, rtol=0)
    # same column space and row space as Σᵢ Δᵢ
    for a, b in [(got, total), (total, got), (got.T, total.T), (total.T, got.T)]:
        q, _ = np.linalg.qr(b)
        assert np.abs(a - q @ (q.T @ a)).max() < TOL


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_iso_cts_is_isotropic_and_contains_the_common_subspace(shape):
    base, models = make(shape, 3, seed=5)
    got = merged_delta("iso_cts", base, models, common_space_fraction=0.5)
    s = np.linalg.svd(got, compute_uv=False)
    assert s.max() - s.min() < TOL and s.min() > 0.01
    c, _ = subspace_sizes(*shape, 3, 0.5)
    u_common = np.linalg.svd(sum(deltas_np(base, models)))[0][:, :c]
    q, _ = np.linalg.qr(got)
    assert np.abs(u_common - q @ (q.T @ u_common)).max() < TOL
    # and it is not just Iso-C: task-specific directions changed the subspace
    assert np.abs(got - merged_delta("iso_c", base, models)).max() > 1e-2


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_iso_cts_with_all_common_space_equals_iso_c(shape):
    base, models = make(shape, 4, seed=6)
    a = merge_tensor("iso_cts", models, base, None, {"common_space_fraction": 1.0, "alpha": 1.5})
    b = merge_tensor("iso_c", models, base, None, {"alpha": 1.5})
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_tsv_one_task_full_rank_is_base_plus_alpha_delta(shape):
    base, models = make(shape, 1, seed=7)
    want = base + 0.6 * (models[0] - base)
    torch.testing.assert_close(merge_tensor("tsv_merge", models, base, None, {"alpha": 0.6}), want, atol=1e-10, rtol=0)
    got = merge_tensor("tsv_merge", models, base, None, {"alpha": 0.6, "rank_fraction": 1.0})
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_tsv_factors_are_orthonormal_and_carry_the_kept_singular_values(shape):
    base, models = make(shape, 3, seed=8)
    deltas = [m - base for m in models]
    u, s, vh = tsv_components(deltas, 1 / 3)
    k = min(shape) // 3
    assert u.shape == (shape[0], 3 * k) and vh.shape == (3 * k, shape[1])
    eye = torch.eye(3 * k, dtype=u.dtype)
    torch.testing.assert_close(u.T @ u, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(vh @ vh.T, eye, atol=1e-10, rtol=0)
    kept = torch.cat([torch.linalg.svdvals(d)[:k] for d in deltas])
    torch.testing.assert_close(s, kept)
    # seen from outside: the merged task matrix's spectrum is exactly the kept singular values
    got = np.linalg.svd(merged_delta("tsv_merge", base, models, alpha=2.0), compute_uv=False)[: 3 * k]
    np.testing.assert_allclose(got, 2.0 * np.sort(kept.numpy())[::-1], atol=TOL, rtol=0)


def test_tsv_of_already_orthogonal_tasks_is_task_arithmetic():
    # Δ₁ and Δ₂ use disjoint orthonormal column and row directions: nothing to decorrelate
    g = torch.Generator().manual_seed(9)
    q_left, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    q_right, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    d1 = q_left[:, :4] @ torch.diag(torch.tensor([5.0, 3, 2, 1], dtype=torch.float64)) @ q_right[:, :4].T
    d2 = q_left[:, 4:8] @ torch.diag(torch.tensor([4.0, 2.5, 1.5, 0.5], dtype=torch.float64)) @ q_right[:, 4:8].T
    base = torch.randn(10, 8, generator=g, dtype=torch.float64)
    out = merge_tensor("tsv_merge", [base + d1, base + d2], base)
    torch.testing.assert_close(out, base + d1 + d2, atol=1e-10, rtol=0)


def test_tsv_keeps_nothing_when_there_are_more_tasks_than_directions():
    # k = ⌊2 · 1/3⌋ = 0: the reference code's merged matrix is all zeros, so the base is kept
    base, models = make((2, 6), 3, seed=10)
    torch.testing.assert_close(merge_tensor("tsv_merge", models, base), base, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(7,), (), (3, 2, 2, 2), (1, 4, 5)], ids=["bias", "scalar", "conv", "3d"])
def test_tensors_that_are_not_matrices_get_the_mean_task_vector(name, shape):
    base, models = make(shape, 3, seed=11)
    want = base + 0.8 * sum(m - base for m in models) / 3
    torch.testing.assert_close(merge_tensor(name, models, base, None, {"alpha": 0.8}), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_svd_false_averages_a_matrix(name):
    base, models = make((12, 9), 3, seed=12)
    want = base + 1.2 * sum(m - base for m in models) / 3
    got = merge_tensor(name, models, base, None, {"alpha": 1.2, "svd": False})
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert not torch.allclose(merge_tensor(name, models, base, None, {"alpha": 1.2}), want, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_alpha_zero_keeps_the_base_and_identical_models_give_the_base(name):
    base, models = make((6, 5), 2, seed=13)
    torch.testing.assert_close(merge_tensor(name, models, base, None, {"alpha": 0.0}), base, atol=0, rtol=0)
    out = merge_tensor(name, [base.clone(), base.clone()], base)
    torch.testing.assert_close(out, base, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- (3) registration and parameter errors


def test_registered_with_base_required_and_documented_formulas():
    for name in NAMES:
        spec = REGISTRY[name]
        assert spec.needs_base and not spec.random and spec.min_models == 1
        assert spec.reference.startswith("https://arxiv.org/abs/")
        assert "alpha" in spec.global_params and not spec.model_params
        assert "base + alpha" in spec.fn.__doc__
    assert REGISTRY["tsv_merge"].global_params["rank_fraction"].default is None
    assert REGISTRY["iso_cts"].global_params["common_space_fraction"].default == 0.8
    assert all(REGISTRY[n].global_params["alpha"].default == 1.0 for n in NAMES)


@pytest.mark.parametrize(
    "name,global_params,message",
    [
        ("tsv_merge", {"alpha": -0.5}, "`alpha` must be in"),
        ("iso_c", {"alpha": float("inf")}, "`alpha` must be finite"),
        ("iso_cts", {"alpha": "big"}, "`alpha` must be a number"),
        ("tsv_merge", {"rank_fraction": 0}, "`rank_fraction` must be in"),
        ("tsv_merge", {"rank_fraction": 1.5}, "`rank_fraction` must be in"),
        ("tsv_merge", {"rank_fraction": 0.4}, "`rank_fraction` .* times the number of models \\(3\\)"),
        ("iso_cts", {"common_space_fraction": 1.2}, "`common_space_fraction` must be in"),
        ("iso_cts", {"common_space_fraction": -0.1}, "`common_space_fraction` must be in"),
        ("iso_c", {"common_space_fraction": 0.5}, "unknown parameter `common_space_fraction`"),
        ("iso_c", {"svd": "no"}, "`svd` must be true or false"),
    ],
)
def test_parameter_errors_name_the_parameter(name, global_params, message):
    base, models = make((6, 5), 3)
    with pytest.raises(RecipeError, match=message) as err:
        merge_tensor(name, models, base, None, global_params)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_input_contract(name):
    base, models = make((6, 5), 2)
    with pytest.raises(RecipeError, match="needs a base_model"):
        merge_tensor(name, models, None)
    with pytest.raises(RecipeError, match="at least 1"):
        merge_tensor(name, [], base)
    with pytest.raises(RecipeError, match="unknown parameter `weight`"):
        merge_tensor(name, models, base, [{"weight": 1.0}, {"weight": 1.0}])
