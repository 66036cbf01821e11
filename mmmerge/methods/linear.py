"""linear: the weighted average Σ wᵢθᵢ / Σ wᵢ (or the plain weighted sum with normalize: false).

The base model, if the recipe names one, is an ordinary input with its own weight (as in mergekit).
With normalize on, weights summing to zero are rejected (mergekit would write inf/NaN).
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from ..io import pages
from . import _common
from ._common import WEIGHT, widened
from ._registry import Param, compute_dtype, method


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
    title="Model soups (Wortsman et al., ICML 2022)",
    reference="https://arxiv.org/abs/2203.05482",
    calling="streaming",
)
def linear(tensors, base, params, global_params, generator=None, out_dtype=None, out=None) -> torch.Tensor:
    """Slice by slice: each input is widened a cache-sized slice at a time and each finished slice is written
    in `out_dtype`, so no full-size float32 copy of an input or of the result is made (converting whole bf16
    inputs took a third of a merge's time)."""
    dtype = compute_dtype(tensors)
    flat = [t.reshape(-1) for t in tensors]
    weights = [p["weight"] for p in params]
    result = out
    out = torch.empty(flat[0].numel(), dtype=out_dtype or dtype, device=flat[0].device) if out is None else out.view(-1)
    chunk = _common.CHUNK
    buffer, total = (_common.scratch(("linear", k), min(chunk, out.numel()), dtype, out.device) for k in ("x", "sum"))
    for start in range(0, out.numel(), chunk):
        part = out[start:start + chunk]
        pages.ready(part)
        acc = part if part.dtype == dtype else total[:part.numel()]
        for i, (x, w) in enumerate(zip(flat, weights)):
            x = widened(x[start:start + chunk], buffer)
            if i == 0:
                torch.mul(x, w, out=acc)
            else:
                acc.add_(x, alpha=w)
        if global_params["normalize"]:
            acc.div_(sum(weights))
        if acc is not part:
            part.copy_(acc)
        for x in flat:  # a large tensor's file pages, done with (io/pages.py)
            pages.release(x[start:start + chunk])
        pages.release(part)
    return out.view(tensors[0].shape) if result is None else result
