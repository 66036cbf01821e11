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


def spherical(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dim: int, flatten: bool, eps: float = 1e-8):
    """Slerp of two tensors along `dim` (or flattened); linear where they are (nearly) collinear."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(colinear, (1 - t) * v0 + t * v1, result)
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(shape)


CHUNK = 1 << 20  # entries per chunk of mergekit's slerp: its sums run chunk by chunk


@method(
    "slerp", native=True,
    global_params={"t": Param(float, help="0 gives the base model, 1 the other model")},
    base="required",
    min_models=1,
    max_models=1,
    title="spherical linear interpolation (Shoemake, SIGGRAPH 1985)",
    reference="https://en.wikipedia.org/wiki/Slerp",
)
def slerp(tensors, base, params, global_params, generator=None, *, dot_threshold=0.9995, eps=1e-8):
    """Over the whole flattened tensor, in float32 (float64 for float64 inputs), chunk by chunk; the result is
    written into a tensor of the inputs' dtype."""
    wide = torch.float64 if base.dtype == torch.float64 else torch.float32
    a, b = base.reshape(1, -1), tensors[0].reshape(1, -1)
    t = torch.tensor([global_params["t"]]).reshape(-1, 1).to(wide)
    if not a.shape[1]:
        return ((1 - t) * a + t * b).reshape(base.shape).to(base.dtype)
    starts = range(0, a.shape[1], CHUNK)
    norm_a = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a[:, i:i + CHUNK].to(wide), dim=1,
                                                                            keepdim=True) for i in starts]), dim=0)
    norm_b = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b[:, i:i + CHUNK].to(wide), dim=1,
                                                                            keepdim=True) for i in starts]), dim=0)
    norm_a, norm_b = torch.where(norm_a > eps, norm_a, 1), torch.where(norm_b > eps, norm_b, 1)
    dot = torch.stack([((a[:, i:i + CHUNK].to(wide) / norm_a) * (b[:, i:i + CHUNK].to(wide) / norm_b))
                       .sum(dim=1, keepdim=True) for i in starts]).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    out = torch.empty_like(a)
    for i in starts:
        out[:, i:i + CHUNK] = coef_a * a[:, i:i + CHUNK].to(wide) + coef_b * b[:, i:i + CHUNK].to(wide)
    return out.reshape(base.shape)


@method(
    "nuslerp", native=True,
    model_params={"weight": WEIGHT},
    global_params={
        "nuslerp_row_wise": Param(bool, False, help="interpolate rows (dim 0) instead of columns"),
        "nuslerp_flatten": Param(bool, True, help="interpolate the whole tensor as one vector"),
    },
    base="optional",
    min_models=2,
    max_models=2,
    title="NuSLERP, spherical interpolation of two models or of their task vectors (mergekit's own; no paper)",
)
def nuslerp(tensors, base, params, global_params, generator=None):
    weights = [p["weight"] for p in params]
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    how = dict(dim=0 if global_params["nuslerp_row_wise"] else -1,
               flatten=global_params["nuslerp_flatten"])
    if base is not None:
        return base + spherical(t, tensors[0] - base, tensors[1] - base, **how)
    return spherical(t, tensors[0], tensors[1], **how)


@method(
    "multislerp", native=True,
    model_params={"weight": WEIGHT},
    global_params={
        "normalize_weights": Param(bool, True, help="divide weights by their sum"),
        "eps": Param(float, 1e-8, low=0.0, low_open=True, help="added to norms before dividing; a mean norm below it is zero"),
    },
    base="optional",
    min_models=1,
    title="Multi-SLERP (Goddard, blog post)",
    reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
)
def multislerp(tensors, base, params, global_params, generator=None):
    if len(tensors) == 1:
        return tensors[0]
    eps = global_params["eps"]
    stacked = torch.stack(tensors, dim=0)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)
    weights = torch.tensor([p["weight"] for p in params], dtype=stacked.dtype, device=stacked.device)
    if global_params["normalize_weights"]:
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] != 2:
            raise RecipeError("multislerp: the weighted directions cancel out (antipodal inputs with balancing "
                              "weights); change a `weight`")
        out = (stacked[0] * weights[0] + stacked[1] * weights[1]).view(stacked.shape[1:])
        return out + base if base is not None else out
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    length = torch.norm(tangent) + eps
    out = (mean * torch.cos(length) + tangent * (torch.sin(length) / length)) * (norms.squeeze(-1) * weights).sum()
    out = out.view(stacked.shape[1:])
    return out + base if base is not None else out


@method(
    "karcher", native=True,
    global_params={
        "max_iter": Param(int, 10, low=1, help="iterations of the fixed-point update"),
        "tol": Param(float, 1e-5, low=0.0, low_open=True, help="convergence tolerance"),
    },
    base="ignored",
    min_models=1,
    title="Functionality-Oriented LLM Merging on the Fisher-Rao Manifold (Karcher mean; Wang et al., 2026)",
    reference="https://arxiv.org/abs/2603.04972",
)
def karcher(tensors, base, params, global_params, generator=None):
    if len(tensors) == 1:
        return tensors[0]
    max_iter, tol = global_params["max_iter"], global_params["tol"]
    wide = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms, units = [], []
    for x in tensors:
        n = torch.linalg.vector_norm(x.to(wide))
        norms.append(n)
        units.append(torch.zeros_like(x) if n.item() == 0.0 else (x / n).to(x.dtype))
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        total = 0
        for x in tensors:
            total = total + x * 0
        return total
    weight_sum = sum(alphas[i] for i in valid)
    weights, vunits = [alphas[i] / weight_sum for i in valid], [units[i] for i in valid]
    mean = torch.zeros_like(vunits[0])
    for a, u in zip(weights, vunits):
        mean += a * u
    mean_norm = torch.linalg.vector_norm(mean.to(wide))
    mean = vunits[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(weights, vunits):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        length = torch.linalg.vector_norm(tangent.to(wide))
        if length.item() < tol:
            break
        mean = (torch.cos(length) * mean + torch.sin(length) * (tangent / length)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(wide))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    scale = 0
    for a, n in zip(alphas, norms):
        scale = scale + a * n
    return scale * mean

