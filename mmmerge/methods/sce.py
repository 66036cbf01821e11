"""sce: Select (highest-variance entries), Calculate (weights from task-vector energy), Erase (sign conflicts).

Per-model weights are not used: model i's weight is mean(δᵢ²) / Σⱼ mean(δⱼ²) (uniform when that sum is
~0). With select_topk < 1 only the ⌊select_topk · #nonzero-variance⌋ entries whose variance across
models is largest are kept. Then the TIES sign election erases disagreeing entries and the rest are
averaged with the weights (mergekit 0.1.5).
"""

from __future__ import annotations

import torch

from ._common import INT8_MASK, sign_consensus, task_vectors
from ._registry import Param, method
from . import native_others  # the same method in mergekit's order of operations (half precision)


def _select(deltas: torch.Tensor, fraction: float) -> torch.Tensor:
    if fraction >= 1:
        return torch.ones_like(deltas[0])
    var = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction)
    mask = torch.zeros_like(var)
    if k > 0:
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def _energy_weights(deltas: torch.Tensor) -> torch.Tensor:
    energy = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)
    total = energy.sum().item()
    if abs(total) < 1e-6:
        return torch.full_like(energy, 1.0 / energy.shape[0])
    return energy / total


@method(
    "sce", native=native_others.sce,
    global_params={
        "select_topk": Param(float, 1.0, low=0.0, high=1.0, low_open=True, help="fraction of entries kept by variance"),
        "int8_mask": INT8_MASK,
    },
    base="required",
    reference="https://arxiv.org/abs/2408.07990",
)
def sce(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    if not tensors:
        return base
    deltas = task_vectors(tensors, base)
    if global_params["select_topk"] < 1:
        deltas = deltas * _select(deltas, global_params["select_topk"]).unsqueeze(0)
    weights = _energy_weights(deltas).reshape(-1, *([1] * base.dim())) * sign_consensus(deltas)
    return base + (deltas * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1e-6)
