"""sce: Select (highest-variance entries), Calculate (weights from task-vector energy), Erase (sign conflicts).

Per-model weights are not used: model i's weight is mean(δᵢ²) / Σⱼ mean(δⱼ²) (uniform when that sum is
~0). With select_topk < 1 only the ⌊select_topk · #nonzero-variance⌋ entries whose variance across
models is largest are kept. Then the TIES sign election erases disagreeing entries and the rest are
averaged with the weights (mergekit 0.1.5).
"""

from __future__ import annotations

import torch

from ._common import INT8_MASK
from ._registry import Param, method


def sign_agreement(task_vectors: torch.Tensor, mask_dtype) -> torch.Tensor:
    """Where each task vector's sign agrees with the elected sign of their sum (in the mask dtype, as mergekit)."""
    elected = (task_vectors.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1
    return task_vectors.sign().to(mask_dtype) == elected


def top_variance(tvs: torch.Tensor, density: float, mask_dtype) -> torch.Tensor:
    """1 on the ⌊density · #nonzero-variance⌋ entries whose variance across the models is largest."""
    if density <= 0:
        return torch.zeros_like(tvs[0], dtype=mask_dtype)
    var = torch.var(tvs, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * density)
    mask = torch.zeros_like(var, dtype=mask_dtype)
    if k:
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


@method(
    "sce", native=True,
    global_params={
        "select_topk": Param(float, 1.0, low=0.0, high=1.0, low_open=True, help="fraction of entries kept by variance"),
        "int8_mask": INT8_MASK,
    },
    base="required",
    title="FuseChat: SCE merging (Wan et al., 2024)",
    reference="https://arxiv.org/abs/2408.07990",
)
def sce(tensors, base, params, global_params, generator=None):
    if not tensors:
        return base
    mask_dtype = torch.int8 if global_params["int8_mask"] else base.dtype
    tvs = torch.stack([t - base for t in tensors], dim=0)
    topk = global_params["select_topk"]
    if topk < 1:
        tvs = tvs * top_variance(tvs, topk, mask_dtype).unsqueeze(0)
    agree = sign_agreement(tvs, mask_dtype)
    energy = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    total = torch.sum(energy).item()
    weights = torch.ones_like(energy) / energy.shape[0] if abs(total) < 1e-6 else energy / total
    weights = weights.reshape(-1, *([1] * (tvs.dim() - 1)))
    erased = weights * agree
    return base + (tvs * erased).sum(dim=0) / torch.sum(erased, dim=0).clamp(min=1e-6)
