"""nearswap: take the other model's value where it is within ``t`` of the base, blend smoothly beyond.

Per entry, w = clamp(t / max(|base − other|, 1e-6), 0, 1) and the result is w·other + (1 − w)·base.
"""

from __future__ import annotations

import torch

from ._registry import Param, method


@method(
    "nearswap", native=True,
    global_params={"t": Param(float, low=0.0, help="distance below which the other model's value is taken")},
    base="required",
    min_models=1,
    max_models=1,
    title="NearSwap (alchemonaut, QuartetAnemoi-70B model card)",
    reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
)
def nearswap(tensors, base, params, global_params, generator=None):
    other = tensors[0]
    weight = (global_params["t"] / torch.abs(base - other).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base
