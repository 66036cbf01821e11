"""linear: the weighted average Σ wᵢθᵢ / Σ wᵢ (or the plain weighted sum with normalize: false).

The base model, if the recipe names one, is an ordinary input with its own weight (as in mergekit).
With normalize on, weights summing to zero are rejected (mergekit would write inf/NaN).
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from ._common import WEIGHT
from ._registry import Param, method


def _check(params: list[dict], global_params: dict) -> None:
    if global_params["normalize"] and params and sum(p["weight"] for p in params) == 0:
        raise RecipeError("linear: parameter `weight` sums to 0 over the models; change a weight or set normalize: false")


@method(
    "linear",
    model_params={"weight": WEIGHT},
    global_params={"normalize": Param(bool, True, help="divide by the sum of weights")},
    base="ignored",
    min_models=1,
    check=_check,
    reference="https://arxiv.org/abs/2203.05482",
    one_pass=True,
)
def linear(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    total = None
    for t, p in zip(tensors, params):  # one pass, in place: one result buffer, not one per model
        total = t * p["weight"] if total is None else total.add_(t, alpha=p["weight"])
    if global_params["normalize"]:
        total.div_(sum(p["weight"] for p in params))
    return total
