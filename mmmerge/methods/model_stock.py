"""model_stock: move from the base towards the average of the models by t = N·cosθ / (1 + (N−1)·cosθ).

cosθ is the mean pairwise cosine between the models' task vectors, over the whole tensor or, with
``filter_wise``, per row. Where 1 + (N−1)·cosθ is ~0 the base is kept (mergekit 0.1.5).
"""

from __future__ import annotations

import torch

from ._registry import Param, method
from . import native_others  # the same method in mergekit's order of operations (half precision)


@method(
    "model_stock", native=native_others.model_stock,
    global_params={"filter_wise": Param(bool, False, help="one interpolation ratio per row instead of per tensor")},
    base="required",
    min_models=2,
    reference="https://arxiv.org/abs/2403.19522",
)
def model_stock(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    if global_params["filter_wise"]:
        w0 = base if base.dim() > 1 else base.unsqueeze(0)
        ws = [t if t.dim() > 1 else t.unsqueeze(0) for t in tensors]
    else:
        w0, ws = base.reshape(-1), [t.reshape(-1) for t in tensors]
    deltas = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(deltas):
        for b in deltas[i + 1 :]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    ratio = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denom))
    average = sum(ws) / n
    return (ratio * average + (1 - ratio) * w0).reshape(base.shape)
