"""Helpers shared by the method families: task vectors, sparsification, sign consensus, parameter kinds.

The sparsifiers follow mergekit 0.1.5 (mergekit/sparsify.py) exactly, draw order included, so a seeded
generator reproduces mergekit's masks under the same torch seed.
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from ._registry import Param

# Parameter kinds used by several methods.
WEIGHT = Param(float, help="scale of this model's contribution")
DENSITY = Param(float, 1.0, low=0.0, high=1.0, low_open=True, help="fraction of entries kept")
BOOL_FALSE = Param(bool, False)
BOOL_TRUE = Param(bool, True)


def task_vectors(tensors: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """Stack of differences to the base, shape [n_models, *base.shape]."""
    return torch.stack([t - base for t in tensors])


# Radix selection: the top 15 bits of a non-negative float's bit pattern order it (32768 buckets).
_BUCKET_SHIFT = {torch.float32: (torch.int32, 16), torch.float64: (torch.int64, 48)}
_CHUNK = 1 << 24  # 16M entries: a 64 MiB temporary; smaller chunks cost more in per-chunk overhead


def _kth_largest(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(the k-th largest score, positions of the scores in its bucket or None, how many lie above that bucket).

    For non-negative float32/float64 scores, a histogram of bit-pattern buckets finds the bucket holding the
    k-th largest and only that bucket is searched (`kthvalue` on all n entries is 2x slower). Buckets are
    computed in chunks so the extra memory is a chunk, not a copy of the tensor."""
    if scores.dtype not in _BUCKET_SHIFT or scores.numel() < 1 << 16:
        return torch.kthvalue(scores, scores.numel() - k + 1).values, None, 0
    itype, shift = _BUCKET_SHIFT[scores.dtype]
    chunks = scores.view(itype).split(_CHUNK)
    counts = sum(torch.bincount(c >> shift, minlength=1 << 15) for c in chunks)
    at_or_above = counts.flip(0).cumsum(0).flip(0)
    b = int((at_or_above >= k).nonzero()[-1])
    above = int(at_or_above[b] - counts[b])
    where = torch.cat([((c >> shift) == b).nonzero().squeeze(1) + i * _CHUNK for i, c in enumerate(chunks)])
    inside = scores[where]
    return torch.kthvalue(inside, inside.numel() - (k - above) + 1).values, where, above


def top_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of a 1-D tensor of non-negative scores, equal scores taken in
    index order.

    A selection, not a sort: linear time, about 10x faster than `argsort` on large tensors. mergekit sorts
    with `argsort`, whose choice among equal values is an unspecified detail of the sort; here it is the
    lowest index. Where scores at the cut are distinct (any continuous data) the two keep the same entries.
    """
    n = scores.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    cut, where, above = _kth_largest(scores, k)
    mask = scores > cut
    if where is None:
        where, inside = torch.arange(n, device=scores.device), scores
    else:
        inside = scores[where]
    need = k - above - int((inside > cut).sum())
    if need > 0:
        mask[where[inside == cut][:need]] = True
    return mask


def largest_mask(delta: torch.Tensor, density: float) -> torch.Tensor | None:
    """TIES pruning: keep the max(1, ⌊density·n⌋) entries of largest magnitude (None: keep all)."""
    n = delta.numel()
    if density >= 1 or n == 0:
        return None
    return top_mask(delta.abs().reshape(-1), max(1, int(density * n))).view(delta.shape)


def middle_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor | None:
    """Breadcrumbs: drop the ⌊gamma·n⌋ largest entries (fewer if needed), then the smallest, keeping ⌊density·n⌋."""
    if density >= 1:
        return None
    n = delta.numel()
    keep = int(density * n)
    drop_small = max(0, n - keep - int(gamma * n))
    scores = delta.abs().reshape(-1)
    # ascending positions [drop_small, drop_small + keep) = the top n - drop_small minus the top n - drop_small - keep
    return (top_mask(scores, n - drop_small) & ~top_mask(scores, n - drop_small - keep)).view(delta.shape)


def random_mask(delta: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor | None:
    """DARE: keep each entry independently with probability ``density`` (one Bernoulli draw per entry)."""
    if density >= 1:
        return None
    return torch.bernoulli(torch.full_like(delta, density), generator=generator).bool()


def rank_mask(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator | None) -> torch.Tensor | None:
    """DELLA MagPrune: keep probability rises linearly with magnitude rank from density-ε to density+ε.

    Ranks run along dim 1 (a 1-D tensor is one row), as in mergekit. Where that dimension has a single
    entry mergekit fails (0/0); here the entry gets the middle probability, ``density``.
    """
    if density >= 1:
        return None
    rows = delta if delta.dim() >= 2 else delta.unsqueeze(0)
    ranks = torch.argsort(rows.abs(), dim=1).argsort(dim=1).to(rows.dtype) + 1
    span = rows.shape[1] - 1
    rank_frac = ((ranks - 1) / span).clamp(0, 1) if span > 0 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + rank_frac * 2 * epsilon
    return torch.bernoulli(probs, generator=generator).bool().reshape(delta.shape)


def l1_rescale(delta: torch.Tensor, mask: torch.Tensor | None, eps: float = 1e-7) -> torch.Tensor | None:
    """The factor that restores the L1 norm of `delta` after masking (None when either norm is below eps)."""
    if mask is None:
        return None
    before = delta.abs().sum()
    after = delta.abs().mul_(mask).sum()
    if before < eps or after < eps:
        return None
    return before / after


def check_della_epsilon(params: list[dict], global_params: dict) -> None:
    for i, p in enumerate(params):
        d, e = p["density"], p["epsilon"]
        if d < 1 and not (0 < d - e and d + e < 1):
            raise RecipeError(
                f"DELLA pruning: parameter `epsilon` ({e:g}) must keep density ± epsilon inside (0, 1) for model {i} (density {d:g})"
            )


def sign_consensus(deltas: torch.Tensor) -> torch.Tensor:
    """TIES sign election over dim 0: True where an entry's sign equals the sign of the sum (0 counts as +).

    Zero entries never agree.
    """
    elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    return deltas.sign() == elected
