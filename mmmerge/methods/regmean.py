"""regmean: Regression Mean, Jin et al., ICLR 2023, arXiv 2212.09849 ("Dataless Knowledge Fusion by Merging
Weights of Language Models").

A linear layer's merged weight is the one whose outputs are closest, in least squares, to every model's
outputs on that model's own inputs: min_W Σᵢ ||Xᵢ W − Xᵢ Wᵢ||². Only the inputs' inner-product (Gram) matrices
Gᵢ = XᵢᵀXᵢ are needed; mmmerge/calibration.py collects them with forward hooks.
"""

from __future__ import annotations

import torch

from ..errors import ShapeMismatchError
from ._registry import Param, method
from ._statistics import STATISTICS, all_or_none, statistic


def regmean_weight(weights: list[torch.Tensor], grams: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """W = (Σᵢ G̃ᵢ)⁻¹ Σᵢ G̃ᵢ Wᵢ in the paper's [in, out] layout, G̃ᵢ = α Gᵢ + (1 − α) diag(Gᵢ).

    torch stores weights as [out, in] (the paper's Wᵀ), so the result is (Σᵢ Wᵢ G̃ᵢ)(Σᵢ G̃ᵢ)⁻¹ here.
    """
    shrunk = [alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g)) for g in grams]
    total = sum(shrunk)
    rhs = sum(g @ w.T for g, w in zip(shrunk, weights))  # [in, out]
    try:
        return torch.linalg.solve(total, rhs).T
    except torch.linalg.LinAlgError:  # an input feature that is zero in every model's data: least norm
        return (torch.linalg.pinv(total) @ rhs).T


@method(
    "regmean",
    model_params={"statistics": STATISTICS},
    global_params={"alpha": Param(float, 0.9, low=0.0, high=1.0,
                                  help="share of the Gram matrices' off-diagonal kept (the paper's 0.9)")},
    base="ignored",
    min_models=1,
    title="Dataless Knowledge Fusion by Merging Weights of Language Models (RegMean; Jin et al., ICLR 2023)",
    reference="https://arxiv.org/abs/2212.09849",
    calling="named",
)
def regmean(tensors, base, params, global_params, generator=None, *, name=None, input_names=None) -> torch.Tensor:
    """RegMean for one tensor.

    A 2-D weight [out, in] for which every model's statistics hold a Gram matrix [in, in]: ``regmean_weight``.
    Every other tensor (biases, norms, embeddings, a model without statistics): the plain mean, as the paper does
    for all weights that are not inputs of a linear layer.
    """
    grams = [statistic(p["statistics"], "gram", key, "regmean")
            for p, key in zip(params, input_names or [name] * len(params))]
    if tensors[0].dim() != 2 or not all_or_none(grams, "gram", name, "regmean"):
        return torch.stack(tensors).mean(0)
    n_in = tensors[0].shape[1]
    for i, g in enumerate(grams):
        if tuple(g.shape) != (n_in, n_in):
            raise ShapeMismatchError(f"regmean: tensor {name}: the Gram matrix of model {i} is {tuple(g.shape)}, "
                                     f"the weight takes {n_in} inputs")
    return regmean_weight(tensors, [g.to(tensors[0]) for g in grams], global_params["alpha"])
