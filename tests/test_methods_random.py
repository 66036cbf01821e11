"""Random methods (dare_*, della*, arcee_fusion on large tensors) against mergekit 0.1.5.

mergekit draws from torch's global generator; mmmerge draws from the generator it is given (or the
global one), in the same order, so the same seed must give the same tensor, not just the same law.
"""

import pytest
import torch

from mmmerge.methods import REGISTRY, merge_tensor
from mergekit_oracle import SHAPES, WD, assert_matches, make_inputs, mergekit_result

RANDOM = [
    ("dare_linear", WD([(0.2, 0.3), (0.5, 0.5), (1.0, 0.9)]), {}),
    ("dare_linear", WD([(1.0, 0.4), (1.0, 0.7), (0.5, 1.0)]), {"rescale": False, "normalize": True}),
    ("dare_ties", WD([(0.2, 0.3), (0.5, 0.5), (1.0, 0.9)]), {}),
    ("dare_ties", WD([(1.0, 0.4), (-0.5, 0.7), (0.8, 0.2)]), {"normalize": True, "lambda": 0.8}),
    ("della", WD([(0.2, 0.3), (0.5, 0.5), (1.0, 0.8)]), {}),
    ("della", WD([(1.0, 0.5), (0.5, 0.5), (1.0, 0.5)], epsilon=0.3), {"rescale": False, "normalize": False}),
    ("della_linear", WD([(0.2, 0.3), (0.5, 0.5), (1.0, 0.8)]), {}),
    ("della_linear", WD([(1.0, 0.2), (0.7, 0.6)], epsilon=0.05), {"lambda": 1.5}),
]


def test_registry_marks_exactly_the_random_methods():
    assert {n for n, s in REGISTRY.items() if s.random} == {"dare_linear", "dare_ties", "della", "della_linear", "arcee_fusion"}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("case", RANDOM, ids=[f"{c[0]}-{i}" for i, c in enumerate(RANDOM)])
def test_same_seed_gives_mergekits_tensor(case, shape):
    name, params, global_params = case
    models, base = make_inputs(shape, len(params), seed=11)
    for seed in (0, 1234):
        got, change = assert_matches(name, models, base, params, global_params, seed=seed)
        assert change > 1e-4
    # generator=None draws from torch's global generator, exactly as mergekit does
    torch.manual_seed(77)
    expected = mergekit_result(name, models, base, params, global_params)
    torch.manual_seed(77)
    assert torch.equal(merge_tensor(name, models, base, params, global_params), expected)


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_reproducible_for_a_seed_and_different_across_seeds(name):
    models, base = make_inputs((64, 32), 2)
    params = WD([(1.0, 0.5), (0.5, 0.4)])

    def run(seed):
        return merge_tensor(name, models, base, params, {}, torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_dare_keeps_the_right_fraction_and_rescales_by_l1():
    models, base = make_inputs((200, 500), 1, unchanged=0.0)
    delta = models[0] - base
    g = torch.Generator().manual_seed(0)
    plain = merge_tensor("dare_linear", models, base, WD([(1.0, 0.3)]), {"rescale": False}, g) - base
    kept = plain != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01  # 100k Bernoulli(0.3) draws: sd 0.0015
    assert torch.allclose(plain[kept], delta[kept], atol=1e-6)
    rescaled = merge_tensor("dare_linear", models, base, WD([(1.0, 0.3)]), {}, g) - base
    assert abs(rescaled.abs().sum().item() / delta.abs().sum().item() - 1) < 1e-4


def test_della_keep_probability_rises_with_magnitude():
    models, base = make_inputs((400, 100), 1, unchanged=0.0)
    delta = models[0] - base
    out = merge_tensor("della_linear", models, base, WD([(1.0, 0.5)], epsilon=0.2), {"rescale": False}, torch.Generator().manual_seed(1))
    kept = (out - base) != 0
    ranks = delta.abs().argsort(dim=1).argsort(dim=1)
    low, high = kept[ranks < 20].float().mean().item(), kept[ranks >= 80].float().mean().item()
    assert abs(low - 0.33) < 0.03 and abs(high - 0.67) < 0.03  # p = 0.3 + 0.4 * rank / 99


def test_arcee_fusion_samples_large_tensors_like_mergekit():
    models, base = make_inputs((1001, 1000), 1)  # over 1,000,000 entries: quantiles from a sample
    for seed in (0, 5):
        assert_matches("arcee_fusion", models, base, [{}], {}, seed=seed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_seed_gives_mergekits_tensor_on_cuda():
    models, base = make_inputs((64, 48), 3)
    models, base = [m.cuda() for m in models], base.cuda()
    for name, params, global_params in RANDOM[::2]:
        torch.manual_seed(9)
        expected = mergekit_result(name, models, base, params, global_params)
        got = merge_tensor(name, models, base, params, global_params, torch.Generator("cuda").manual_seed(9))
        assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", RANDOM[::2], ids=[c[0] for c in RANDOM[::2]])
def test_same_seed_gives_mergekits_tensor_when_merged_in_slices(case, monkeypatch):
    from mmmerge.methods import _common

    monkeypatch.setattr(_common, "CHUNK", 10007)
    name, params, global_params = case
    models, base = make_inputs((300, 320), len(params), seed=12)
    assert_matches(name, models, base, params, global_params, seed=3)
