"""model_stock: move from the base towards the average of the models by t = N·cosθ / (1 + (N−1)·cosθ).

cosθ is the mean pairwise cosine between the models' task vectors, over the whole tensor or, with
``filter_wise``, per row. Where 1 + (N−1)·cosθ is ~0 the base is kept (mergekit 0.1.5).
"""

from __future__ import annotations

import torch

from ._registry import Param, method


@method(
    "model_stock", native=True,
    global_params={"filter_wise": Param(bool, False, help="one interpolation ratio per row instead of per tensor")},
    base="required",
    min_models=2,
    title="Model Stock (Jang et al., ECCV 2024)",
    reference="https://arxiv.org/abs/2403.19522",
)
def model_stock(tensors, base, params, global_params, generator=None):
    shape = base.shape
    if global_params["filter_wise"]:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [t.unsqueeze(0) if base.dim() == 1 else t for t in tensors]
    else:
        w0, ws = base.reshape(-1), [t.reshape(-1) for t in tensors]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos),
                    (n * cos) / torch.where(singular, torch.ones_like(denominator), denominator))
    total = 0
    for w in ws:
        total = total + w
    return (t * (total / n) + (1 - t) * w0).reshape(shape)
