"""nearswap: take the other model's value where it is within ``t`` of the base, blend smoothly beyond.

Per entry, w = clamp(t / max(|base − other|, 1e-6), 0, 1) and the result is w·other + (1 − w)·base.
"""

from __future__ import annotations

import torch

from ._registry import Param, method
from . import native_others  # the same method in mergekit's order of operations (half precision)


@method(
    "nearswap", native=native_others.nearswap,
    global_params={"t": Param(float, low=0.0, help="distance below which the other model's value is taken")},
    base="required",
    min_models=1,
    max_models=1,
    reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
)
def nearswap(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    other = tensors[0]
    w = (global_params["t"] / (base - other).abs().clamp(min=1e-6)).clamp(0, 1)
    return w * other + (1 - w) * base
