"""What the spectral methods share (tsv.py, iso.py): their alpha and svd parameters, and the task-matrix
helpers (sum and mean of task vectors, the orthogonal polar factor, which tensors are merged spectrally)."""

from __future__ import annotations

import torch

from ._registry import Param

# Scaling coefficient of the merged task matrix, shared by tsv_merge, iso_c and iso_cts. The reference
# repositories choose it on held-out validation data (TSV-M: a grid over (0, 3]); with no data the
# neutral 1.0 is the default, as in fusion_bench's implementations of all three methods.
ALPHA = Param(float, 1.0, low=0.0, help="scale of the merged task vector (θ = base + alpha·Δ)")
# The reference code merges every 2-D tensor spectrally except one it excludes by name (CLIP's
# `text_projection`; LLM ports exclude `embed_tokens`/`lm_head`). A method here sees no tensor names,
# so the exclusion is a per-tensor parameter: `svd: [{filter: embed_tokens, value: false}, {value: true}]`.
SVD = Param(bool, True, help="merge 2-D tensors spectrally; false averages this tensor's task vectors instead")


def polar(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor P·Qᵀ of ``a`` = P·Σ·Qᵀ (thin SVD): the nearest matrix with orthonormal
    columns (tall ``a``) or rows (wide ``a``), spanning the same column/row space when ``a`` has full rank.
    """
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def is_matrix(base: torch.Tensor, global_params: dict) -> bool:
    """The rule of the reference code: exactly 2-D (and not opted out with ``svd: false``)."""
    return base.dim() == 2 and base.numel() > 0 and global_params["svd"]


def task_sum(tensors: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """Σᵢ (θᵢ − base), added in input order."""
    total = torch.zeros_like(base)
    for t in tensors:
        total += t - base
    return total


def mean_task_vector(tensors: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """(1/T)·Σᵢ (θᵢ − base): what the reference code keeps for every tensor it does not decompose."""
    return task_sum(tensors, base) / len(tensors)
