"""passthrough: copy the single input, optionally multiplied by ``scale``."""

from __future__ import annotations

import torch

from ._registry import Param, method


@method(
    "passthrough",
    model_params={"scale": Param(float, None, nullable=True, help="multiply the tensor by this")},
    base="ignored",
    min_models=1,
    max_models=1,
    title="Passthrough: the tensor as it is, times `scale` when given (mergekit's own; no paper)",
)
def passthrough(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    scale = params[0]["scale"]
    return tensors[0] if scale is None else tensors[0] * scale
