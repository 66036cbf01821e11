"""fisher: Fisher-weighted averaging, Matena & Raffel, NeurIPS 2022, arXiv 2111.09832 ("Merging Models with
Fisher-Weighted Averaging").

Each entry is averaged with weights equal to how sensitive its model's loss is to it (the diagonal of the Fisher
information), so a parameter one model relies on is not diluted by models that do not use it. The diagonal
Fishers come from mmmerge/calibration.py.
"""

from __future__ import annotations

import torch

from ..errors import RecipeError, ShapeMismatchError
from ._registry import Param, method
from ._statistics import STATISTICS, all_or_none, statistic


def fisher_average(tensors: list[torch.Tensor], fishers: list[torch.Tensor], weights: list[float],
                   epsilon: float) -> torch.Tensor:
    """Σᵢ λᵢ (Fᵢ + ε) θᵢ / Σᵢ λᵢ (Fᵢ + ε), elementwise."""
    num = torch.zeros_like(tensors[0])
    den = torch.zeros_like(tensors[0])
    for t, f, w in zip(tensors, fishers, weights):
        scaled = w * (f + epsilon)
        num += scaled * t
        den += scaled
    return num / den


def _check(params: list[dict], global_params: dict) -> None:
    if params and sum(p["weight"] for p in params) <= 0:
        raise RecipeError("fisher: parameter `weight` must sum to more than 0 over the models")


@method(
    "fisher",
    model_params={"statistics": STATISTICS,
                  "weight": Param(float, 1.0, low=0.0, help="the paper's λᵢ: scale of this model's Fisher")},
    global_params={"epsilon": Param(float, 1e-6, low=0.0, low_open=True,
                                    help="added to every Fisher entry (the reference code's fisher_floor)")},
    base="ignored",
    min_models=1,
    check=_check,
    title="Merging Models with Fisher-Weighted Averaging (Matena and Raffel, NeurIPS 2022)",
    reference="https://arxiv.org/abs/2111.09832",
    calling="named",
)
def fisher(tensors, base, params, global_params, generator=None, *, name=None, input_names=None) -> torch.Tensor:
    """Fisher merging of one tensor: ``fisher_average`` with each model's diagonal Fisher for this tensor; the
    λ-weighted mean (all Fisher entries equal) for a tensor no model has statistics for."""
    weights = [p["weight"] for p in params]
    fishers = [statistic(p["statistics"], "fisher", key, "fisher")
              for p, key in zip(params, input_names or [name] * len(params))]
    if not all_or_none(fishers, "fisher", name, "fisher"):
        fishers = [torch.zeros_like(tensors[0]) for _ in tensors]
    for i, f in enumerate(fishers):
        if f.shape != tensors[0].shape:
            raise ShapeMismatchError(f"fisher: tensor {name}: the Fisher of model {i} is {tuple(f.shape)}, "
                                     f"the tensor {tuple(tensors[0].shape)}")
    return fisher_average(tensors, [f.to(tensors[0]) for f in fishers], weights, global_params["epsilon"])
