"""The linear-time selection behind TIES/breadcrumbs pruning, against a sort."""

import pytest
import torch

from mmmerge.methods._common import largest_keep, middle_keep, top_keep


def top_mask(scores, k):
    n = scores.numel()
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0)
    return top_keep(scores, k).mask(scores)


def largest_mask(delta, density):
    return largest_keep(delta, density).mask(delta)


def middle_mask(delta, density, gamma):
    return middle_keep(delta, density, gamma).mask(delta)


def applied(keep, delta):
    """What the merge keeps, slice by slice as it applies it."""
    out = delta.reshape(-1).clone()
    for start in range(0, out.numel(), 4099):
        keep.apply_(out[start:start + 4099], start)
    return out.view(delta.shape)


@pytest.mark.parametrize("k", [0, 1, 7, 500, 999, 1000, 1200])
def test_top_mask_equals_the_sorted_top_k_on_distinct_scores(k):
    scores = torch.rand(1000, generator=torch.Generator().manual_seed(k))
    want = torch.zeros(1000, dtype=torch.bool)
    want[torch.argsort(scores, descending=True)[:k]] = True
    assert torch.equal(top_mask(scores, k), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bucketed_selection_on_large_tie_heavy_tensors_equals_a_stable_sort(dtype):
    g = torch.Generator().manual_seed(1)
    base = (torch.randn(300_000, generator=g) * 0.02).bfloat16()
    scores = ((base.float() + torch.randn(300_000, generator=g) * 0.002).bfloat16().float() - base.float()).abs()
    scores = scores.to(dtype)
    order = torch.sort(scores, descending=True, stable=True).indices
    for k in (1, 1000, 150_000, 299_999):
        want = torch.zeros(300_000, dtype=torch.bool)
        want[order[:k]] = True
        assert torch.equal(top_mask(scores, k), want), k


def test_ties_at_the_cut_are_taken_in_index_order():
    scores = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 2.0, 2.0])
    assert top_mask(scores, 3).tolist() == [False, True, True, True, False, False, False]
    # a stable descending sort keeps equal scores in index order: the same choice
    for k in range(8):
        want = torch.zeros(7, dtype=torch.bool)
        want[torch.sort(scores, descending=True, stable=True).indices[:k]] = True
        assert torch.equal(top_mask(scores, k), want), k


def test_pruning_keeps_exactly_the_requested_count_when_most_magnitudes_tie():
    g = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, (4096,), generator=g).float() * 2 - 1
    delta = sign * torch.randint(1, 20, (4096,), generator=g).float()  # 19 distinct magnitudes, no zeros
    kept = delta * largest_mask(delta, 0.5)
    assert int((kept != 0).sum()) == 2048
    assert kept[kept != 0].abs().min() >= delta.abs()[kept == 0].abs().max()
    middle = delta * middle_mask(delta, 0.5, 0.1)  # drop the 409 largest, keep the next 2048
    assert int((middle != 0).sum()) == 2048
    ranks = torch.sort(delta.abs(), descending=True, stable=True).indices
    want = torch.zeros(4096, dtype=torch.bool)
    want[ranks[409:409 + 2048]] = True
    assert torch.equal(middle != 0, want)


def test_large_signed_deltas_select_by_magnitude_as_a_stable_sort_does():
    """Large float32 tensors take the radix path, which reads |x| from the bit pattern: negative values, zeros
    and -0.0 must rank as their magnitudes do."""
    g = torch.Generator().manual_seed(3)
    base = (torch.randn(200_000, generator=g) * 0.02).bfloat16().float()
    delta = (base + torch.randn(200_000, generator=g) * 0.002).bfloat16().float() - base
    delta[:5000] = 0.0
    delta[5000:10000] = -0.0
    delta[10000:10010] = -1.0
    ranks = torch.sort(delta.abs(), descending=True, stable=True).indices
    for density in (0.001, 0.3, 0.5, 0.97):
        k = int(density * delta.numel())
        want = torch.zeros(delta.numel(), dtype=torch.bool)
        want[ranks[:k]] = True
        assert torch.equal(largest_mask(delta, density), want), density
        assert torch.equal(applied(largest_keep(delta, density), delta), delta * want), density
    n, keep, gamma = delta.numel(), int(0.4 * delta.numel()), 0.05
    want = torch.zeros(n, dtype=torch.bool)
    want[ranks[int(gamma * n):int(gamma * n) + keep]] = True
    assert torch.equal(middle_mask(delta, 0.4, gamma), want)
    assert torch.equal(applied(middle_keep(delta, 0.4, gamma), delta), delta * want)
