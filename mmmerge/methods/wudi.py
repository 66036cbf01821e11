"""wudi: WUDI-merging, Cheng et al., ICML 2025, arXiv 2503.08099 ("Whoever Started the Interference Should End It").

Data-free. The paper shows a linear layer's task vector τᵢ spans (approximately) the inputs its task feeds that
layer, so the interference the merged task vector τ_m causes on task i is measured by (τ_m − τᵢ) τᵢᵀ without
any data. Reference code: fusion_bench/method/wudi/wudi.py (``wudi_merging``), which this module follows:
Adam from τ_m = Σᵢ τᵢ, lr 1e-5, 300 steps, 2-D tensors only; every other tensor gets the mean task vector.
"""

from __future__ import annotations

import torch

from ._registry import Param, method
from .tsv import mean_task_vector


def wudi_loss(merged: torch.Tensor, deltas: torch.Tensor, sq_norms: torch.Tensor,
              grams: torch.Tensor | None = None) -> torch.Tensor:
    """Σᵢ ||(τ_m − τᵢ) τᵢᵀ||²_F / ||τᵢ||²_F for stacked task vectors ``deltas`` [T, out, in].

    With ``grams`` = τᵢᵀτᵢ [T, in, in] the same value is computed as Σᵢ ⟨(τ_m − τᵢ) τᵢᵀτᵢ, τ_m − τᵢ⟩ / ||τᵢ||²,
    which never forms an [out, out] matrix (an embedding's would be vocabulary²).
    """
    diff = merged.unsqueeze(0) - deltas
    if grams is not None:
        per_task = (torch.matmul(diff, grams) * diff).sum(dim=(1, 2))
    else:
        per_task = torch.matmul(diff, deltas.transpose(1, 2)).square().sum(dim=(1, 2))
    return (per_task / sq_norms).sum()


def wudi_task_vector(deltas: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """τ_m after ``steps`` Adam steps on ``wudi_loss`` from Σᵢ τᵢ (deterministic: no random draw)."""
    sq_norms = deltas.reshape(len(deltas), -1).square().sum(dim=1).clamp_min(torch.finfo(deltas.dtype).tiny)
    grams = torch.matmul(deltas.transpose(1, 2), deltas) if deltas.shape[1] > deltas.shape[2] else None
    merged = torch.nn.Parameter(deltas.sum(dim=0).clone())
    optimizer = torch.optim.Adam([merged], lr=lr, weight_decay=0)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            wudi_loss(merged, deltas, sq_norms, grams).backward()
            optimizer.step()
    return merged.detach()


@method(
    "wudi",
    global_params={
        "steps": Param(int, 300, low=0, help="Adam steps per 2-D tensor (the reference code's iter_num)"),
        "lr": Param(float, 1e-5, low=0.0, low_open=True, help="Adam learning rate (the reference code's)"),
        "scaling": Param(float, 1.0, low=0.0, help="scale of the merged task vector (θ = base + scaling·τ_m)"),
        # the reference code's `exclude_keys` (CLIP's text_projection): methods see no names, so a per-tensor value
        "optimize": Param(bool, True, help="optimise this 2-D tensor; false gives it the mean task vector"),
    },
    base="required",
    min_models=1,
    title="Whoever Started the Interference Should End It: Guiding Data-Free Model Merging via Task Vectors "
          "(WUDI; Cheng et al., ICML 2025)",
    reference="https://arxiv.org/abs/2503.08099",
)
def wudi(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    """WUDI-merging of one tensor.

    2-D (a linear layer's [out, in] weight), task vectors τᵢ = θᵢ − base:
        τ_m = argmin Σᵢ (1/||τᵢ||²_F) ||(τ_m − τᵢ) τᵢᵀ||²_F, approached by Adam from Σᵢ τᵢ;
        result = base + scaling · τ_m.
    Any other tensor (biases, norms, conv kernels, a 2-D tensor given ``optimize: false``):
        base + scaling · (1/T) Σᵢ τᵢ, as the reference code.
    A task vector that is all zeros adds nothing to the objective (its term is 0/0, counted as 0).
    """
    scaling = global_params["scaling"]
    if base.dim() != 2 or base.numel() == 0 or not global_params["optimize"]:
        return base + scaling * mean_task_vector(tensors, base)
    deltas = torch.stack([t - base for t in tensors])
    merged = wudi_task_vector(deltas, global_params["steps"], global_params["lr"])
    return base + scaling * merged
