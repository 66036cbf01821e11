"""wudi: gradient descent must approach the closed-form optimum of the paper's quadratic objective, re-derived
in numpy from its normal equations (independent of the implementation's Adam loop)."""

import numpy as np
import pytest
import torch

from mmmerge.methods import REGISTRY, merge_tensor


def np_objective(m, deltas):
    return sum(np.sum(((m - d) @ d.T) ** 2) / np.sum(d**2) for d in deltas)


def np_optimum(deltas):
    """τ_m (Σᵢ wᵢ τᵢᵀτᵢ) = Σᵢ wᵢ τᵢ τᵢᵀ τᵢ with wᵢ = 1/||τᵢ||²_F (the objective's gradient set to zero)."""
    w = [1 / np.sum(d**2) for d in deltas]
    a = sum(wi * d.T @ d for wi, d in zip(w, deltas))
    b = sum(wi * d @ d.T @ d for wi, d in zip(w, deltas))
    return np.linalg.solve(a.T, b.T).T


def make(shape, n_tasks, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    return base, [base + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n_tasks)]


def test_the_two_forms_of_the_loss_agree():
    from mmmerge.methods.wudi import wudi_loss

    _, models = make((9, 4), 3, seed=3)
    deltas = torch.stack(models)
    merged = deltas.mean(0) * 1.3
    norms = deltas.reshape(3, -1).square().sum(1)
    grams = deltas.transpose(1, 2) @ deltas
    torch.testing.assert_close(wudi_loss(merged, deltas, norms, grams), wudi_loss(merged, deltas, norms))
    want = np_objective(merged.numpy(), [d.numpy() for d in deltas])
    assert abs(float(wudi_loss(merged, deltas, norms)) - want) < 1e-9 * want


@pytest.mark.parametrize("shape", [(6, 5), (5, 8)])
def test_adam_approaches_the_closed_form_optimum(shape):
    base, models = make(shape, 3)
    deltas = [(m - base).numpy() for m in models]
    best = np_optimum(deltas)
    start = sum(deltas)
    got = (merge_tensor("wudi", models, base, None, {"steps": 3000, "lr": 1e-3}) - base).numpy()
    gap_start = np_objective(start, deltas) - np_objective(best, deltas)
    assert gap_start > 1e-3  # the optimum is not the starting point: there is something to find
    assert np_objective(got, deltas) - np_objective(best, deltas) < 1e-4 * gap_start
    assert np.linalg.norm(got - best) < 1e-2 * np.linalg.norm(best)


def test_defaults_scaling_one_d_fallback_and_determinism():
    spec = REGISTRY["wudi"]
    assert {k: p.default for k, p in spec.global_params.items()} == {"steps": 300, "lr": 1e-5, "scaling": 1.0,
                                                                       "optimize": True}
    base, models = make((4, 3), 2, seed=1)
    zero_steps = merge_tensor("wudi", models, base, None, {"steps": 0, "scaling": 0.5})
    torch.testing.assert_close(zero_steps, base + 0.5 * sum(m - base for m in models))  # τ_m starts at Σᵢ τᵢ
    a = merge_tensor("wudi", models, base, None, {"steps": 20, "lr": 1e-3})
    assert torch.equal(a, merge_tensor("wudi", models, base, None, {"steps": 20, "lr": 1e-3}))
    torch.testing.assert_close(merge_tensor("wudi", models, base, None, {"optimize": False}),
                               base + sum(m - base for m in models) / 2)
    bias, biases = make((7,), 2, seed=2)
    torch.testing.assert_close(merge_tensor("wudi", biases, bias, None, {"scaling": 2.0}),
                               bias + 2.0 * (biases[0] + biases[1] - 2 * bias) / 2)


def test_merge_through_a_recipe_on_a_tiny_llama(tmp_path):
    from safetensors.torch import load_file

    from mmmerge.engine import merge
    from tiny_world import make_lm

    base, a, b = (make_lm(tmp_path / n, seed=s) for n, s in (("base", 0), ("a", 1), ("b", 2)))
    recipe = {"merge_method": "wudi", "base_model": str(base), "parameters": {"steps": 30, "lr": 1e-4},
              "models": [{"model": str(a)}, {"model": str(b)}]}
    merge(recipe, tmp_path / "out", quiet=True)
    out = load_file(tmp_path / "out" / "model.safetensors")
    t = {n: load_file(f / "model.safetensors") for n, f in (("base", base), ("a", a), ("b", b))}
    name = "model.layers.0.self_attn.q_proj.weight"
    want = merge_tensor("wudi", [t["a"][name], t["b"][name]], t["base"][name], None, {"steps": 30, "lr": 1e-4})
    torch.testing.assert_close(out[name], want)
    assert not torch.allclose(out[name], t["a"][name] + t["b"][name] - t["base"][name], atol=1e-5)  # Adam moved it
    norm = "model.norm.weight"
    torch.testing.assert_close(out[norm], t["base"][norm] + (t["a"][norm] + t["b"][norm] - 2 * t["base"][norm]) / 2)
