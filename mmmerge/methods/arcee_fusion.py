"""arcee_fusion: keep the other model's change only where it matters most.

importance = |θ − base| · KL(softmax(θ) ‖ softmax(base)) (softmax and KL along the last dim), and an
entry changes iff importance ≥ median + 1.5·IQR of all importances. Quantiles are read from the sorted
importances at ⌊q·(n−1)⌋; above 1,000,000 entries they come from 1,000,000 entries drawn with
replacement (the only random step, drawn from ``generator``), as in mergekit 0.1.5.
"""

from __future__ import annotations

import torch

from ._registry import method
from . import native_others  # the same method in mergekit's order of operations (half precision)

SAMPLE = 1_000_000


def _importance(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(model, dim=-1) + 1e-8
    q = torch.softmax(base, dim=-1) + 1e-8
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return (model - base).abs() * kl


def _threshold(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    flat = scores.reshape(-1)
    if flat.numel() > SAMPLE:
        flat = flat[torch.randint(flat.numel(), (SAMPLE,), device=flat.device, generator=generator)]
    ordered = torch.sort(flat).values
    positions = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long().to(ordered.device)
    q1, median, q3 = ordered[positions]
    return median + 1.5 * (q3 - q1)


@method("arcee_fusion", native=native_others.arcee_fusion, base="required", min_models=1, max_models=1, random=True, reference="https://arcee.ai")
def arcee_fusion(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    scores = _importance(tensors[0], base)
    keep = (scores >= _threshold(scores, generator)).to(base.dtype)
    return base + (tensors[0] - base) * keep
