"""The histogram selection behind TIES/breadcrumbs pruning (methods/_selection.py), against a stable sort: the k
largest magnitudes, equal ones at the cut taken in index order from the low end (a stable descending sort's top
k) or from the high end (a stable ascending sort's last k), slice by slice."""

import pytest
import torch

from mmmerge.methods._selection import MaskKeep, select_top

CHUNK = 4099  # not a power of two: the scans cross slice ends everywhere


def top_mask(scores, k, *, ties_low=True):
    flat = scores.reshape(-1)
    n = flat.numel()
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0)
    keep = select_top(lambda s: flat[s:s + CHUNK], n, CHUNK, k, ties_low=ties_low, like=flat)
    applied = flat.clone()
    scratch = torch.empty(CHUNK, dtype=flat.dtype)
    for start in range(0, n, CHUNK):
        keep.apply_(applied[start:start + CHUNK], start, scratch)
    assert torch.equal(applied, flat * keep.mask(flat))  # what the merge applies is what the mask says
    return keep.mask(flat)


def stable_top(scores, k, *, ties_low=True):
    """The top k of a stable sort: descending (ties: lowest index first) or the last k of ascending."""
    want = torch.zeros(scores.numel(), dtype=torch.bool)
    if k <= 0:
        return want
    if ties_low:
        want[torch.sort(scores.reshape(-1).abs(), descending=True, stable=True).indices[:k]] = True
    else:
        want[torch.sort(scores.reshape(-1).abs(), descending=False, stable=True).indices[-k:]] = True
    return want


@pytest.mark.parametrize("k", [1, 7, 500, 999])
def test_distinct_scores_give_the_sorted_top_k(k):
    scores = torch.rand(1000, generator=torch.Generator().manual_seed(k))
    assert torch.equal(top_mask(scores, k), stable_top(scores, k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ties_low", [True, False])
def test_tie_heavy_task_vectors_select_as_a_stable_sort(dtype, ties_low):
    """bf16 fine-tunes: about 2% of a task vector equals the median magnitude; zeros, -0.0 and negatives rank by
    magnitude."""
    g = torch.Generator().manual_seed(1)
    base = (torch.randn(300_000, generator=g) * 0.02).bfloat16()
    delta = ((base.float() + torch.randn(300_000, generator=g) * 0.002).bfloat16().float() - base.float())
    delta[:5000] = 0.0
    delta[5000:10000] = -0.0
    delta[10000:10010] = -1.0
    delta = delta.to(dtype)
    for k in (1, 1000, 150_000, 299_999):
        assert torch.equal(top_mask(delta, k, ties_low=ties_low), stable_top(delta, k, ties_low=ties_low)), k


def test_ties_at_the_cut_are_taken_from_either_end():
    scores = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 2.0, 2.0])
    assert top_mask(scores, 3).tolist() == [False, True, True, True, False, False, False]
    assert top_mask(scores, 3, ties_low=False).tolist() == [False, True, False, False, False, True, True]
    for k in range(8):
        for ties_low in (True, False):
            assert torch.equal(top_mask(scores, k, ties_low=ties_low), stable_top(scores, k, ties_low=ties_low))


def test_masks_are_stored_as_bits_and_read_back_at_any_offset():
    g = torch.Generator().manual_seed(2)
    kept = torch.rand(10_007, generator=g) < 0.3
    keep = MaskKeep(kept.numel())
    for start in range(0, kept.numel(), 4096):
        keep.store(start, kept[start:start + 4096])
    for start, n in [(0, 10_007), (3, 100), (4095, 9), (10_000, 7)]:
        assert torch.equal(keep.kept(start, n).bool(), kept[start:start + n])


@pytest.mark.parametrize("order", ["mask first", "reversed", "twice in order", "every other, then the rest"])
def test_the_cut_found_from_histogram_snapshots_is_the_same_in_any_order(order):
    """With one bin per value the split is found from snapshots of the histogram and a scan of a few slices: the
    keep is the same whatever order the slices are applied in, again, or asked for as a mask first."""
    g = torch.Generator().manual_seed(3)
    flat = (torch.randn(60_000, generator=g) * 0.002).bfloat16()
    flat[::7] = flat[3]  # many ties, everywhere
    wide = flat.float()
    k = 30_000
    want = stable_top(flat, k)
    keep = select_top(lambda s: wide[s:s + CHUNK], wide.numel(), CHUNK, k, ties_low=True, like=wide,
                      bins_of=torch.bfloat16, keys=lambda s: flat[s:s + CHUNK].view(torch.int16) & 0x7FFF)
    starts = list(range(0, wide.numel(), CHUNK))
    passes = {"mask first": [], "reversed": [starts[::-1]], "twice in order": [starts, starts],
              "every other, then the rest": [starts[::2] + starts[1::2]]}[order]
    if order == "mask first":
        assert torch.equal(keep.mask(wide), want)
        passes = [starts]
    scratch = torch.empty(CHUNK)
    for run in passes:
        applied = wide.clone()
        for start in run:
            keep.apply_(applied[start:start + CHUNK], start, scratch)
        assert torch.equal(applied != 0, want & (wide != 0))
    assert torch.equal(keep.mask(wide), want)
