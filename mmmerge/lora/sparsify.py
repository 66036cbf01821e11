"""The tensor combinations of peft's `add_weighted_adapter` (peft.utils.merge_utils), written out here.

Semantics follow peft, which differs from mergekit's methods of the same names: the TIES sign is elected
from the *unweighted* pruned tensors (sum of values, or count of signs with "frequency"), the disjoint
mean divides by the number of agreeing tensors (not their weights), DARE rescales by 1/density, and a
density >= 1 prunes nothing. Random pruning draws from an explicit generator so runs are reproducible.
"""

from __future__ import annotations

import torch

from ..methods._common import sign_consensus

METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")


def magnitude_prune(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density * numel) entries of largest magnitude."""
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype)
    mask[torch.topk(t.abs().reshape(-1), k=k).indices] = 1
    return t * mask.reshape(t.shape)


def random_prune(t: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE: keep each entry with probability density, rescaled by 1/density."""
    mask = torch.bernoulli(torch.full_like(t, density), generator=generator)
    return t * mask / density


def combine(method: str, tensors: list[torch.Tensor], weights: list[float], density: float | None = None,
            sign_method: str = "total", generator: torch.Generator | None = None) -> torch.Tensor:
    """One tensor from `tensors` with `weights` by `method` (one of METHODS)."""
    if method in ("ties", "magnitude_prune") and density < 1:
        tensors = [magnitude_prune(t, density) for t in tensors]
    elif method in ("dare_linear", "dare_ties") and density < 1:
        tensors = [random_prune(t, density, generator) for t in tensors]
    stacked = torch.stack(tensors)
    w = torch.tensor(weights, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
    weighted = stacked * w
    if method not in ("ties", "dare_ties"):
        return weighted.sum(0)
    agree = sign_consensus(stacked if sign_method == "total" else stacked.sign())
    return (weighted * agree).sum(0) / agree.sum(0).clamp(min=1)
