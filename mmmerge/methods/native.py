"""Task-vector merges computed in the recipe's own precision, step by step as mergekit 0.1.5 computes them.

mergekit computes the task-vector family in the dtype it loads the tensors in (a config's `dtype`, bf16 or fp16
in most published configs), rounding after every operation; mmmerge's default kernels compute in float32 and
round once. A published half-precision config reproduces its published model bit for bit only when every
rounding happens where mergekit's does, so these kernels follow mergekit's order of operations on whole
tensors in that dtype: task vectors, sparsification (with its own top-k order and Bernoulli draws), weights
(rounded to the dtype), sign election, sums, normalisation, lambda, and the base added last. They are slower
than the float32 kernels; `compute_dtype: float32` in a recipe chooses those instead.
"""

from __future__ import annotations

import torch

EPS = 1e-7  # below this the L1 norms are not matched (mergekit's tolerance)


def l1_matched(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    kept = delta * mask
    if not rescale:
        return kept
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < EPS or after < EPS:
        return kept
    return kept * (before / after)


def sort_keys(delta: torch.Tensor) -> torch.Tensor:
    """|delta| flattened, as the sort sees it (widened on the CPU, where half-precision sorts are slow)."""
    w = delta.abs().reshape(-1)
    return w.float() if w.device.type == "cpu" else w


def keep_largest(delta, p, rescale, generator):
    density = p["density"]
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[torch.argsort(sort_keys(delta), descending=True)[:k]] = 1
    return l1_matched(delta, mask.reshape_as(delta), rescale)


def keep_middle(delta, p, rescale, generator):
    density = p["density"]
    if density >= 1:
        return delta
    n = delta.numel()
    kept, top = int(density * n), int(p["gamma"] * n)
    bottom = max(0, n - kept - top)
    order = torch.sort(sort_keys(delta), descending=False).indices
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[bottom:bottom + kept]] = 1
    return l1_matched(delta, mask.reshape_as(delta), rescale)


def work_dtype(delta: torch.Tensor) -> torch.dtype:
    """Bernoulli draws run in bf16 as it is, but not in fp16 on the CPU (no kernel): widened there."""
    return delta.dtype if delta.device.type != "cpu" or delta.dtype == torch.bfloat16 else torch.float32


def keep_random(delta, p, rescale, generator):
    density = p["density"]
    if density >= 1:
        return delta
    wd = work_dtype(delta)
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=wd), generator=generator)
    return l1_matched(delta.to(wd), mask, rescale).to(delta.dtype)


def keep_by_rank(delta, p, rescale, generator):
    density, epsilon = p["density"], p["epsilon"]
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    shape, wd = delta.shape, work_dtype(delta)
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = torch.argsort(rows.abs(), dim=1, descending=False).argsort(dim=1).to(wd) + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    spread = ((ranks - low) / (high - low)).clamp(0, 1)
    mask = torch.bernoulli((density - epsilon) + spread * 2 * epsilon, generator=generator).to(wd)
    return l1_matched(rows.to(wd), mask, rescale).to(delta.dtype).reshape(shape)


def task_vector_merge(tensors, base, params, global_params, generator, *, keep, consensus):
    """base + lambda · Σ wᵢ·keep(θᵢ − base) [masked by the elected sign] [/ Σ wᵢ], in base's dtype."""
    if not tensors:
        return base
    deltas = base.new_empty((len(tensors), *base.shape))
    for i, (t, p) in enumerate(zip(tensors, params)):
        delta = t - base
        if keep is not None:
            delta = keep(delta, p, global_params["rescale"], generator)
        deltas[i] = delta
    weights = torch.tensor([p["weight"] for p in params], dtype=deltas.dtype, device=deltas.device)
    weights = weights.reshape(-1, *([1] * base.dim()))
    deltas.mul_(weights)
    if consensus:
        mask_dtype = torch.int8 if global_params["int8_mask"] else base.dtype
        signs = deltas.sign().to(mask_dtype)
        elected = (deltas.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1
        agree = signs == elected
        mixed = (deltas * agree).sum(dim=0)
        divisor = (weights * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if global_params["normalize"]:
        mixed /= divisor
    if global_params["lambda"] != 1:
        mixed *= global_params["lambda"]
    return (base + mixed).to(base.dtype)
