"""Task-vector methods: task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs(_ties), della(_linear).

Each is  base + lambda · Σᵢ wᵢ·sparsify(θᵢ − base) [· agreement mask] [/ normaliser], with mergekit 0.1.5's
choices of sparsifier, sign consensus and defaults:

| method            | sparsifier               | sign consensus | normalize | rescale (L1) |
|-------------------|--------------------------|----------------|-----------|--------------|
| task_arithmetic   | none                     | no             | false     | false        |
| ties              | largest magnitude        | yes            | true      | false        |
| dare_linear       | random (Bernoulli)       | no             | false     | true         |
| dare_ties         | random (Bernoulli)       | yes            | false     | true         |
| breadcrumbs       | drop outliers + smallest | no             | false     | false        |
| breadcrumbs_ties  | drop outliers + smallest | yes            | false     | false        |
| della             | random by magnitude rank | yes            | true      | true         |
| della_linear      | random by magnitude rank | no             | false     | true         |

The normaliser is Σ wᵢ (over the models agreeing with the elected sign, per entry, under consensus;
a zero normaliser counts as 1). ``int8_mask`` (all) and ``density`` (task_arithmetic) are accepted for
mergekit compatibility and change nothing.
"""

from __future__ import annotations

import torch

from . import _common, native
from ._common import (DENSITY, INT8_MASK, WEIGHT, check_della_epsilon, l1_rescale, largest_keep, middle_keep, random_keep,
                      rank_keep)
from ._registry import MethodSpec, Param, register



def _none(delta, p, generator):
    return None


def _magnitude(delta, p, generator):
    return largest_keep(delta, p["density"])


def _random(delta, p, generator):
    return random_keep(delta, p["density"], generator)


def _outliers(delta, p, generator):
    return middle_keep(delta, p["density"], p["gamma"])


def _rank(delta, p, generator):
    return rank_keep(delta, p["density"], p["epsilon"], generator)


def _merge(tensors, base, params, global_params, generator, *, sparsify, consensus, out_dtype=None):
    """Two passes, so no full-size task vector is kept. First, model by model in input order (mergekit's draw
    order), what the sparsifier keeps and the L1 rescale factor, from the whole task vector; then the merge
    itself, slice by slice, from the inputs, what is kept and the factors. Peak: the inputs and the output,
    one task vector, the random sparsifiers' masks (a byte per entry), and the slice buffers.

    Every step is an elementwise operation on float32 operands: a half-precision or boolean operand sends
    torch through a path 2-6x slower, so inputs are widened by a copy, magnitude pruning is a threshold
    (`TopKeep`) and the sign-agreement masks are 1.0/0.0."""
    n = len(tensors)
    if not n:
        return base
    flat_base = base.reshape(-1)
    chunk = _common.CHUNK
    work = _Buffers(n, min(chunk, flat_base.numel()), base.dtype, base.device)
    keeps, scales = [], []
    delta = torch.empty_like(base)
    for x, p in zip(tensors, params):
        _task_vector(x, base, delta)
        keep = sparsify(delta, p, generator)
        keeps.append(keep)
        scales.append(l1_rescale(delta, keep) if global_params["rescale"] else None)
        del keep
    del delta
    weights = [p["weight"] for p in params]
    flat_inputs = [t.reshape(-1) for t in tensors]
    out = torch.empty(flat_base.shape, dtype=out_dtype or base.dtype, device=base.device)
    for start in range(0, flat_base.numel(), chunk):
        part = slice(start, start + chunk)
        b = flat_base[part]
        deltas = work.deltas(b.numel())
        for d, x, keep, scale, w in zip(deltas, flat_inputs, keeps, scales, weights):
            _task_vector(x[part], b, d)  # bit for bit the first pass's values
            if keep is not None:
                keep.apply_(d, start)
            if scale is not None:
                d.mul_(scale)
            d.mul_(w)
        _combine(deltas, weights, b, global_params, consensus, work, out[part])
    return out.view(base.shape)


def _task_vector(x: torch.Tensor, base: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = x - base, widening x exactly by a copy (a mixed-dtype subtraction is 2x slower)."""
    return torch.sub(x, base, out=out) if x.dtype == out.dtype else out.copy_(x).sub_(base)


class _Buffers:
    """The second pass's temporaries, allocated once and reused for every slice: fresh large allocations
    each slice would page-fault on every use (the allocator returns them to the system), which costs more
    than the arithmetic."""

    def __init__(self, n: int, size: int, dtype: torch.dtype, device: torch.device):
        new = lambda: torch.empty(size, dtype=dtype, device=device)  # noqa: E731
        self.d = [new() for _ in range(n)]
        self.mixed, self.divisor, self.sign, self.signed, self.agree = new(), new(), new(), new(), new()

    def deltas(self, m: int) -> list[torch.Tensor]:
        return [d[:m] for d in self.d]


def _combine(deltas, weights, base, global_params, consensus, work, out):
    """out = base + λ · Σ wᵢδᵢ [over the entries agreeing with the elected sign] [/ Σ wᵢ over the same]."""
    m = base.numel()
    if consensus:
        mixed = torch.add(deltas[0], deltas[1], out=work.mixed[:m]) if len(deltas) > 1 else work.mixed[:m].copy_(deltas[0])
        for d in deltas[2:]:
            mixed.add_(d)
        # the elected sign, +1.0 or -1.0 (a zero sum counts as +); comparisons write 1.0/0.0
        sign = torch.ge(mixed, 0, out=work.sign[:m]).mul_(2).sub_(1)
        mixed.zero_()
        divisor = work.divisor[:m].zero_()
        agree, signed = work.agree[:m], work.signed[:m]
        for d, w in zip(deltas, weights):
            torch.gt(torch.mul(d, sign, out=signed), 0, out=agree)  # the elected sign; zero entries never agree
            mixed.add_(d.mul_(agree))
            divisor.add_(agree, alpha=w)
        divisor.add_(torch.eq(divisor, 0, out=agree))  # a zero divisor counts as 1
    else:
        mixed = deltas[0]
        for d in deltas[1:]:
            mixed.add_(d)
        divisor = sum(torch.tensor(w, dtype=base.dtype) for w in weights)
        divisor = 1.0 if divisor.abs() < 1e-8 else divisor
    if global_params["normalize"]:
        mixed.div_(divisor)
    if global_params["lambda"] != 1:
        mixed.mul_(global_params["lambda"])
    if out.dtype == mixed.dtype:
        torch.add(mixed, base, out=out)
    else:
        out.copy_(mixed.add_(base))  # rounded once, from the float32 sum


NATIVE_KEEP = {_none: None, _magnitude: native.keep_largest, _random: native.keep_random,
               _outliers: native.keep_middle, _rank: native.keep_by_rank}


def _family_member(name, *, sparsify, consensus, normalize, rescale, extra=None, check=None, reference=""):
    def fn(tensors, base, params, global_params, generator=None, out_dtype=None):
        return _merge(tensors, base, params, global_params, generator, sparsify=sparsify, consensus=consensus,
                      out_dtype=out_dtype)

    def in_native_dtype(tensors, base, params, global_params, generator=None):
        return native.task_vector_merge(tensors, base, params, global_params, generator,
                                        keep=NATIVE_KEEP[sparsify], consensus=consensus)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"{name}: task-vector merge (see mmmerge.methods.task_arithmetic)."
    # task_arithmetic accepts `density` and ignores it, as mergekit does.
    model_params = {"weight": WEIGHT, "density": DENSITY, **(extra or {})}
    register(
        MethodSpec(
            name=name,
            fn=fn,
            model_params=model_params,
            global_params={
                "normalize": Param(bool, normalize, help="divide by the sum of weights"),
                "rescale": Param(bool, rescale, help="restore each task vector's L1 norm after sparsifying"),
                "lambda": Param(float, 1.0, help="scale of the merged task vector"),
                "int8_mask": INT8_MASK,
            },
            base="required",
            random=sparsify in (_random, _rank),
            widens_inputs=True,
            check=check,
            reference=reference,
            native=in_native_dtype,
        )
    )
    return fn


GAMMA = Param(float, 0.01, low=0.0, high=1.0, help="fraction of largest-magnitude entries dropped")
EPSILON = Param(float, 0.15, low=0.0, high=1.0, high_open=True, help="spread of keep probabilities around density")

# One row per member: its sparsifier, sign election and defaults (the table in the module docstring).
task_arithmetic = _family_member("task_arithmetic", sparsify=_none, consensus=False, normalize=False, rescale=False,
                                 reference="https://arxiv.org/abs/2212.04089")
ties = _family_member("ties", sparsify=_magnitude, consensus=True, normalize=True, rescale=False,
                      reference="https://arxiv.org/abs/2306.01708")
dare_ties = _family_member("dare_ties", sparsify=_random, consensus=True, normalize=False, rescale=True,
                           reference="https://arxiv.org/abs/2311.03099")
dare_linear = _family_member("dare_linear", sparsify=_random, consensus=False, normalize=False, rescale=True,
                             reference="https://arxiv.org/abs/2311.03099")
breadcrumbs = _family_member("breadcrumbs", sparsify=_outliers, consensus=False, normalize=False, rescale=False,
                             extra={"gamma": GAMMA}, reference="https://arxiv.org/abs/2312.06795")
breadcrumbs_ties = _family_member("breadcrumbs_ties", sparsify=_outliers, consensus=True, normalize=False,
                                  rescale=False, extra={"gamma": GAMMA}, reference="https://arxiv.org/abs/2312.06795")
della = _family_member("della", sparsify=_rank, consensus=True, normalize=True, rescale=True,
                       extra={"epsilon": EPSILON}, check=check_della_epsilon,
                       reference="https://arxiv.org/abs/2406.11617")
della_linear = _family_member("della_linear", sparsify=_rank, consensus=False, normalize=False, rescale=True,
                              extra={"epsilon": EPSILON}, check=check_della_epsilon,
                              reference="https://arxiv.org/abs/2406.11617")
