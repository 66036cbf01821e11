"""The other methods mergekit 0.1.5 computes in the loaded dtype, in that dtype and its order of operations.

Companions of `methods.native` (the task-vector family): slerp (float32 math, written in the inputs' dtype),
model_stock, sce, nearswap, nuslerp, multislerp,
karcher (whose norms mergekit takes in float32), ram and ramplus_tl, arcee_fusion (whose float32 mask makes
mergekit's result float32; here it is rounded to the output dtype like every other tensor). Each takes the
method's usual arguments (non-base tensors, base, per-model and global parameters) and returns a tensor.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F


def model_stock(tensors, base, params, global_params, generator=None):
    shape = base.shape
    if global_params.get("filter_wise"):
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [t.unsqueeze(0) if base.dim() == 1 else t for t in tensors]
    else:
        w0, ws = base.reshape(-1), [t.reshape(-1) for t in tensors]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos),
                    (n * cos) / torch.where(singular, torch.ones_like(denominator), denominator))
    total = 0
    for w in ws:
        total = total + w
    return (t * (total / n) + (1 - t) * w0).reshape(shape)


def sign_agreement(task_vectors: torch.Tensor, mask_dtype) -> torch.Tensor:
    elected = (task_vectors.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1
    return task_vectors.sign().to(mask_dtype) == elected


def sce(tensors, base, params, global_params, generator=None):
    if not tensors:
        return base
    mask_dtype = torch.int8 if global_params.get("int8_mask") else base.dtype
    tvs = torch.stack([t - base for t in tensors], dim=0)
    topk = global_params.get("select_topk", 1.0)
    if topk < 1:
        tvs = tvs * top_variance(tvs, topk, mask_dtype).unsqueeze(0)
    agree = sign_agreement(tvs, mask_dtype)
    energy = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    total = torch.sum(energy).item()
    weights = torch.ones_like(energy) / energy.shape[0] if abs(total) < 1e-6 else energy / total
    weights = weights.reshape(-1, *([1] * (tvs.dim() - 1)))
    erased = weights * agree
    return base + (tvs * erased).sum(dim=0) / torch.sum(erased, dim=0).clamp(min=1e-6)


def top_variance(tvs: torch.Tensor, density: float, mask_dtype) -> torch.Tensor:
    if density <= 0:
        return torch.zeros_like(tvs[0], dtype=mask_dtype)
    var = torch.var(tvs, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * density)
    mask = torch.zeros_like(var, dtype=mask_dtype)
    if k:
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def nearswap(tensors, base, params, global_params, generator=None):
    other = tensors[0]
    weight = (global_params["t"] / torch.abs(base - other).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


def spherical(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dim: int, flatten: bool, eps: float = 1e-8):
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


def nuslerp(tensors, base, params, global_params, generator=None):
    weights = [p["weight"] for p in params]
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    how = dict(dim=0 if global_params.get("nuslerp_row_wise") else -1,
               flatten=global_params.get("nuslerp_flatten", True))
    if base is not None:
        return base + spherical(t, tensors[0] - base, tensors[1] - base, **how)
    return spherical(t, tensors[0], tensors[1], **how)


def multislerp(tensors, base, params, global_params, generator=None):
    if len(tensors) == 1:
        return tensors[0]
    eps = global_params.get("eps", 1e-8)
    stacked = torch.stack(tensors, dim=0)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)
    weights = torch.tensor([p["weight"] for p in params], dtype=stacked.dtype, device=stacked.device)
    if global_params.get("normalize_weights", True):
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] != 2:
            raise ValueError("multislerp: the weighted sum of the inputs is zero (antipodal inputs)")
        out = (stacked[0] * weights[0] + stacked[1] * weights[1]).view(stacked.shape[1:])
        return out + base if base is not None else out
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    length = torch.norm(tangent) + eps
    out = (mean * torch.cos(length) + tangent * (torch.sin(length) / length)) * (norms.squeeze(-1) * weights).sum()
    out = out.view(stacked.shape[1:])
    return out + base if base is not None else out


def karcher(tensors, base, params, global_params, generator=None):
    if len(tensors) == 1:
        return tensors[0]
    max_iter, tol = global_params.get("max_iter", 10), global_params.get("tol", 1e-5)
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


def ram_parts(tensors, base, epsilon):
    flat = torch.stack([t - base for t in tensors], dim=0).view(len(tensors), -1)
    nonzero = flat.abs() > epsilon
    counts = nonzero.sum(dim=0, keepdim=True)
    return flat, nonzero, counts, counts > 1, counts == 1


def ram(tensors, base, params, global_params, generator=None):
    if not tensors:
        return base
    flat, nonzero, counts, shared, unique = ram_parts(tensors, base, global_params.get("epsilon", 1e-5))
    kept = flat * nonzero
    merged = ((kept * unique) + (kept * shared / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def ramplus_tl(tensors, base, params, global_params, generator=None):
    if not tensors:
        return base
    eps = global_params.get("epsilon", 1e-5)
    flat, nonzero, counts, shared, unique = ram_parts(tensors, base, eps)
    rho = (nonzero & shared).sum(dim=1) / (nonzero & unique).sum(dim=1).clamp(min=eps)
    boost = 1 + global_params.get("r", 0.1) * rho.clamp(min=0, max=global_params.get("alpha", 0.2))
    kept = flat * nonzero
    merged = ((kept * unique * boost.unsqueeze(-1)) + (kept * shared / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


QUANTILE_SAMPLES = 1_000_000


def arcee_fusion(tensors, base, params, global_params, generator=None):
    other = tensors[0]
    p = F.softmax(other, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    importance = (other - base).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    flat = importance.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLES:  # a sample, drawn with replacement, as mergekit draws it
        flat = flat[torch.randint(flat.numel(), (QUANTILE_SAMPLES,), device=flat.device, generator=generator)]
    ordered, _ = torch.sort(flat)
    q1, median, q3 = ordered[(torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long().to(ordered.device)]
    mask = (importance >= median + 1.5 * (q3 - q1)).float()
    return base + (other - base) * mask


CHUNK = 1 << 20  # entries per chunk of mergekit's slerp: its sums run chunk by chunk


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
