"""Interpolation on the hypersphere: slerp, nuslerp, multislerp, karcher (mergekit 0.1.5 semantics).

- slerp: base → other model by ``t`` along the great circle of the flattened tensors; linear
  interpolation when |cos| > 0.9995 (nearly collinear or antipodal).
- nuslerp: two models, t = w₂/(w₁+w₂) (0.5 when the weights sum to ~0); spherical between the two
  tensors (or their task vectors when a base is given), flattened, per row or per column.
- multislerp: any number of models; barycentric interpolation in the tangent space at the weighted
  mean direction, scaled by the weighted mean norm (task vectors when a base is given).
- karcher: the Karcher mean of the directions of all inputs with equal weights, scaled by the mean norm.
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from ._common import WEIGHT
from ._registry import Param, method
from . import native_others  # the same method in mergekit's order of operations (half precision)


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8):
    """Spherical interpolation of two tensors taken as flat vectors (lerp when nearly collinear)."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    if a.numel() == 0:
        return (1 - t) * v0 + t * v1
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > eps, norm_a, 1.0)
    norm_b = torch.where(norm_b > eps, norm_b, 1.0)
    cos = ((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1)
    if cos.abs() > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(cos)
    return (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)


@method(
    "slerp", native=native_others.slerp,
    global_params={"t": Param(float, help="0 gives the base model, 1 the other model")},
    base="required",
    min_models=1,
    max_models=1,
    reference="https://en.wikipedia.org/wiki/Slerp",
)
def slerp(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    return slerp_tensors(global_params["t"], base, tensors[0])


def _nuslerp_pair(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool, eps: float = 1e-8):
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)

    def unit(x):
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos = (unit(v0) * unit(v1)).sum(dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(collinear, 0.0, cos))
    curved = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(collinear, (1 - t) * v0 + t * v1, curved)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@method(
    "nuslerp", native=native_others.nuslerp,
    model_params={"weight": WEIGHT},
    global_params={
        "nuslerp_row_wise": Param(bool, False, help="interpolate rows (dim 0) instead of columns"),
        "nuslerp_flatten": Param(bool, True, help="interpolate the whole tensor as one vector"),
    },
    base="optional",
    min_models=2,
    max_models=2,
)
def nuslerp(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    w0, w1 = params[0]["weight"], params[1]["weight"]
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    opts = dict(row_wise=global_params["nuslerp_row_wise"], flatten=global_params["nuslerp_flatten"])
    if base is None:
        return _nuslerp_pair(t, tensors[0], tensors[1], **opts)
    return base + _nuslerp_pair(t, tensors[0] - base, tensors[1] - base, **opts)


@method(
    "multislerp", native=native_others.multislerp,
    model_params={"weight": WEIGHT},
    global_params={
        "normalize_weights": Param(bool, True, help="divide weights by their sum"),
        "eps": Param(float, 1e-8, low=0.0, low_open=True, help="added to norms before dividing; a mean norm below it is zero"),
    },
    base="optional",
    min_models=1,
    reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
)
def multislerp(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]  # as mergekit: a single model is returned as it is, base or not
    eps = global_params["eps"]
    x = torch.stack(tensors)
    if base is not None:
        x = x - base
    flat = x.reshape(len(tensors), -1)
    w = torch.tensor([p["weight"] for p in params], dtype=x.dtype, device=x.device)
    if global_params["normalize_weights"]:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w[:, None]).sum(dim=0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise RecipeError(
                "multislerp: the weighted directions cancel out (antipodal inputs with balancing weights); change a `weight`"
            )
        out = x[0] * w[0] + x[1] * w[1]
    else:
        mean = mean / mean_norm
        tangents = units - (units * mean).sum(dim=-1, keepdim=True) * mean
        step = (tangents * w[:, None]).sum(dim=0)
        length = torch.linalg.vector_norm(step) + eps
        direction = mean * torch.cos(length) + step * (torch.sin(length) / length)
        out = (direction * (norms.squeeze(-1) * w).sum()).reshape(x.shape[1:])
    return out + base if base is not None else out


def karcher_mean(tensors: list[torch.Tensor], alphas: list[float], max_iter: int = 10, tol: float = 1e-5):
    """Weighted Riemannian (Karcher) mean of the inputs' directions, times Σ αᵢ‖xᵢ‖."""
    if len(tensors) == 1:
        return tensors[0]
    norms = [torch.linalg.vector_norm(t) for t in tensors]
    live = [i for i, n in enumerate(norms) if n.item() > tol]
    if not live:
        return torch.zeros_like(tensors[0])
    total = sum(alphas[i] for i in live)
    coefs = [alphas[i] / total for i in live]
    units = [tensors[i] / norms[i] for i in live]

    mean = sum((c * u for c, u in zip(coefs, units)), torch.zeros_like(units[0]))
    mean_norm = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(max_iter):
        step = torch.zeros_like(mean)
        for c, u in zip(coefs, units):
            cos = torch.dot(mean.reshape(-1), u.reshape(-1)).clamp(-1.0, 1.0)
            angle = torch.arccos(cos)
            if angle.item() < tol:
                continue
            step = step + c * (angle / torch.sin(angle)) * (u - cos * mean)
        length = torch.linalg.vector_norm(step)
        if length.item() < tol:
            break
        mean = torch.cos(length) * mean + torch.sin(length) * (step / length)
        mean_norm = torch.linalg.vector_norm(mean)
        if mean_norm.item() > tol:
            mean = mean / mean_norm
    return sum(a * n for a, n in zip(alphas, norms)) * mean


@method(
    "karcher", native=native_others.karcher,
    global_params={
        "max_iter": Param(int, 10, low=1, help="iterations of the fixed-point update"),
        "tol": Param(float, 1e-5, low=0.0, low_open=True, help="convergence tolerance"),
    },
    base="ignored",
    min_models=1,
    reference="https://arxiv.org/abs/2603.04972",
)
def karcher(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    n = len(tensors)
    return karcher_mean(tensors, [1.0 / n] * n, global_params["max_iter"], global_params["tol"])

