"""arcee_fusion: keep the other model's change only where it matters most.

importance = |θ − base| · KL(softmax(θ) ‖ softmax(base)) (softmax and KL along the last dim), and an
entry changes iff importance ≥ median + 1.5·IQR of all importances. Quantiles are read from the sorted
importances at ⌊q·(n−1)⌋; above 1,000,000 entries they come from 1,000,000 entries drawn with
replacement (the only random step, drawn from ``generator``), as in mergekit 0.1.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._registry import method

QUANTILE_SAMPLES = 1_000_000  # above this many entries the quantiles come from a sample


@method("arcee_fusion", native=True, base="required", min_models=1, max_models=1, random=True,
        title="Arcee Fusion (Arcee AI; no paper)", reference="https://arcee.ai")
def arcee_fusion(tensors, base, params, global_params, generator=None):
    other = tensors[0]
    p = F.softmax(other, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    importance = (other - base).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    flat = importance.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLES:  # a sample, drawn with replacement, as mergekit draws it
        flat = flat[torch.randint(flat.numel(), (QUANTILE_SAMPLES,), device=flat.device, generator=generator)]
    ordered, _ = torch.sort(flat)
    q1, median, q3 = ordered[(torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long().to(ordered.device)]
    mask = (importance >= median + 1.5 * (q3 - q1)).float()
    return base + (other - base) * mask
