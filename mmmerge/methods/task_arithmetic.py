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

import numpy as np
import torch

from ..io import pages
from . import _common
from ._common import DENSITY, INT8_MASK, WEIGHT, check_della_epsilon
from ._registry import MethodSpec, Param, compute_dtype, register
from ._selection import TIE_BREAKS, BandKeep, MaskKeep, Rescaled, TopKeep, magnitude_keys, select_top


class Rounding:
    """Where mergekit holds a tensor in half precision, the float32 value rounded to it: a half-precision CPU kernel
    computes each operation in float32 and rounds once, so float32 operands rounded after each operation give its
    bits, and float32 kernels are 2-18x faster than half-precision ones (sums over models, comparisons most)."""

    def __init__(self, half: torch.dtype | None, size: int, device: torch.device):
        self.half = half
        self.buffer = _common.scratch("rounding", size, half, device) if half is not None else None

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """t, in place, rounded to the half dtype (values stay float32); nothing without one."""
        if self.half is None:
            return t
        for row in (t if t.dim() > 1 else [t]):  # rows of a slice buffer, each contiguous
            for s in range(0, row.numel(), self.buffer.numel()):
                part = row[s:s + self.buffer.numel()]
                part.copy_(self.buffer[:part.numel()].copy_(part))
        return t


class Deltas:
    """Model i's task vector θᵢ − base, flat, as mergekit computes it: in `compute` (float32/64) operands, rounded
    to mergekit's half dtype if it holds one (`rounding`). A slice at a time (recomputed when asked again, never
    stored whole), or whole, in mergekit's own dtype, where a sparsifier needs all of it at once."""

    def __init__(self, x: torch.Tensor, base: torch.Tensor, compute: torch.dtype, rounding: Rounding, chunk: int,
                 index: int = 0):
        self.x, self.base, self.compute, self.round, self.chunk = x.reshape(-1), base.reshape(-1), compute, rounding, chunk
        self.dtype = rounding.half or compute  # mergekit's dtype for this task vector
        self.shape, self.n = base.shape, base.numel()
        self.buffer = _common.scratch(("delta", index), min(chunk, self.n), compute, base.device)
        self.wide_base = (None if self.base.dtype == compute
                          else _common.scratch(("delta base", index), self.buffer.numel(), compute, base.device))
        # inputs already in mergekit's half dtype: torch's own half subtraction (float32 arithmetic rounded once)
        # gives the rounded task vector in one pass, where widening both sides and rounding back takes four
        self.in_half = rounding.half is not None and x.dtype == base.dtype == rounding.half
        # the half dtype whose bit patterns `keys` returns (one histogram bin per value), or None
        self.key_dtype = rounding.half if self.in_half or rounding.half == torch.bfloat16 else None

    def part(self, start: int, out: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
        """Entries start .. start + chunk, into `out` (default: this object's buffer, valid until the next call);
        `base`: that slice of the base already widened, when the caller has it."""
        if self.in_half:
            half = self._half(start)
            return (self.buffer if out is None else out)[:half.numel()].copy_(half)
        return self.round(self._difference(start, out, base))

    def keys(self, start: int) -> torch.Tensor:
        """`magnitude_keys` of the entries start .., for the selection's histogram: for half precision, read
        straight from the half-precision slice (one histogram bin per value, half the bytes)."""
        if self.in_half:  # masked in place: no new tensor per slice
            half = self._half(start).view(torch.int16)
            return torch.bitwise_and(half, 0x7FFF, out=half)
        if self.round.half != torch.bfloat16:
            return magnitude_keys(self.part(start))
        wide = self._difference(start, None, None)
        return self.round.buffer[:wide.numel()].copy_(wide).view(torch.int16) & 0x7FFF

    def _half(self, start: int) -> torch.Tensor:
        """The slice's task vector in the half dtype, in the rounding's buffer (valid until its next use)."""
        x, base = self.x[start:start + self.chunk], self.base[start:start + self.chunk]
        half = torch.sub(x, base, out=self.round.buffer[:x.numel()])
        _done_with(x, base)
        return half

    def _difference(self, start: int, out: torch.Tensor | None, base: torch.Tensor | None) -> torch.Tensor:
        part = slice(start, start + self.chunk)
        x = self.x[part]
        out = (self.buffer if out is None else out)[:x.numel()]
        own_base = self.base[part] if base is None else None
        if own_base is not None:
            base = own_base if own_base.dtype == self.compute else self.wide_base[:x.numel()].copy_(own_base)
        if x.dtype == self.compute:
            torch.sub(x, base, out=out)
        else:
            out.copy_(x).sub_(base)  # widened exactly by a copy: a mixed-dtype subtraction is 2x slower
        _done_with(x, own_base)
        return out

    def whole(self) -> torch.Tensor:
        out = torch.empty(self.n, dtype=self.dtype, device=self.base.device)
        for start in range(0, self.n, self.chunk):
            out[start:start + self.chunk].copy_(self.part(start))
        return out


def _done_with(*inputs: torch.Tensor | None) -> None:
    """Slices of inputs read for the last time in this pass: a large tensor's file pages leave the process (a later
    pass maps them again from the page cache; io/pages.py)."""
    for x in inputs:
        if x is not None:
            pages.release(x)


# ---- sparsifiers: what each keeps of one task vector, as mergekit 0.1.5's sparsify.py decides it ------------------

def _none(deltas, p, gp, generator):
    return None


def _magnitude(deltas, p, gp, generator):
    """TIES: the max(1, ⌊density·n⌋) largest magnitudes."""
    n, k = deltas.n, _top_count(deltas.n, p["density"])
    if k is None:
        return None
    if k == 0:
        return _rescaled(deltas, TopKeep.nothing(deltas.buffer), gp)
    if gp["tie_break"] == "sort":
        order = torch.argsort(_sort_keys(deltas.whole()), descending=True)
        return _rescaled(deltas, _sorted(order[:k], n), gp)
    return _rescaled(deltas, _top(deltas, k, ties_low=True), gp)


def _top_count(n: int, density: float) -> int | None:
    """How many entries TIES keeps of n: max(1, ⌊density·n⌋), none at density <= 0 (or n = 0), all (None) at 1."""
    if density >= 1:
        return None
    return 0 if density <= 0 or n == 0 else max(1, int(density * n))


def _outliers(deltas, p, gp, generator):
    """breadcrumbs: sorted by magnitude, the ⌊density·n⌋ entries above the smallest, below the ⌊gamma·n⌋ largest
    (fewer dropped from the top when too few are left)."""
    n, density = deltas.n, p["density"]
    if density >= 1:
        return None
    keep = int(density * n)
    bottom = max(0, n - keep - int(p["gamma"] * n))
    if gp["tie_break"] == "sort":
        order = torch.sort(_sort_keys(deltas.whole()), descending=False).indices
        return _rescaled(deltas, _sorted(order[bottom:bottom + keep], n), gp)
    # an ascending stable sort ranks equal magnitudes by index: its top m hold the ties of highest index
    outer, inner = n - bottom, n - bottom - keep  # kept: the top `outer` less the top `inner`
    return _rescaled(deltas, BandKeep(_top(deltas, outer, ties_low=False), _top(deltas, inner, ties_low=False)), gp)


def _random(deltas, p, gp, generator):
    """DARE: one Bernoulli(density) draw per entry, drawn slice by slice (the same stream as one whole draw)."""
    density = p["density"]
    if density >= 1:
        return None
    work = _draw_dtype(deltas.dtype, deltas.base.device)
    keep = _drawn(deltas.n, density, work, generator, deltas.base.device, deltas.chunk)
    return _rescaled(deltas, keep, gp, work=work)


def _drawn(n: int, density: float, work: torch.dtype, generator, device: torch.device, chunk: int) -> MaskKeep:
    """DARE's n Bernoulli(density) draws in `work` from `generator` (None: torch's default one), as the entries they
    keep: on the CPU computed from the generator's state, where that gives torch's draws (_bernoulli_bits, several
    times faster); else drawn by torch a slice of `chunk` (a multiple of 8) at a time, the same stream as one draw of all
    n, as mergekit's."""
    keep = MaskKeep(n)
    source = torch.default_generator if generator is None and device.type == "cpu" else generator
    if source is not None and source.device.type == "cpu" and device.type == "cpu":
        from . import _bernoulli_bits  # numba: imported by the first draw, not by every command

        if work in _bernoulli_bits.DTYPES and _bernoulli_bits.replicates():
            _bernoulli_bits.draw_bits(source, n, density, work, keep.bits)
            return keep
    probs = torch.full((min(chunk, n),), density, dtype=work, device=device)  # made once, not per slice
    drawn = torch.empty_like(probs)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        keep.store(start, torch.bernoulli(probs[:m], generator=generator, out=drawn[:m]))
    return keep


def _rank(deltas, p, gp, generator):
    """DELLA MagPrune: keep probability rising with the magnitude's rank in its row (dim 1), from density - ε to
    density + ε; ranks and probabilities in the draw dtype as mergekit computes them, a block of rows at a time."""
    density, epsilon = p["density"], p["epsilon"]
    if density >= 1:
        return None
    if density <= 0:
        return _rescaled(deltas, TopKeep.nothing(deltas.buffer), gp)
    work = _draw_dtype(deltas.dtype, deltas.base.device)
    whole = deltas.whole()
    keep = MaskKeep(deltas.n)
    if len(deltas.shape) <= 2:  # rows are independent, and the draws go row after row: a block of rows at a time
        rows = whole.view(1 if len(deltas.shape) < 2 else deltas.shape[0], -1)
        per_block = max(8, (deltas.chunk // max(rows.shape[1], 1)) // 8 * 8)  # a multiple of 8: bits stay aligned
        blocks = [(r * rows.shape[1], rows[r:r + per_block]) for r in range(0, rows.shape[0], per_block)]
    else:  # dim 1 is not the last one: the whole tensor, as mergekit ranks it
        blocks = [(0, whole.view(deltas.shape))]
    for start, block in blocks:
        ranks = torch.argsort(block.abs(), dim=1, descending=False).argsort(dim=1).to(work) + 1
        low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
        spread = ((ranks - low) / (high - low)).clamp(0, 1)
        probs = (density - epsilon) + spread * 2 * epsilon
        keep.store(start, torch.bernoulli(probs, generator=generator))
    return _rescaled(deltas, keep, gp, work=work, whole=whole)


def _draw_dtype(work: torch.dtype, device: torch.device) -> torch.dtype:
    """mergekit's random sparsifiers draw in the tensor's dtype, except float16 on the CPU (no kernel): float32."""
    return torch.float32 if work == torch.float16 and device.type == "cpu" else work


def _sort_keys(delta: torch.Tensor) -> torch.Tensor:
    """|delta| flat, as mergekit sorts it (widened on the CPU)."""
    w = delta.abs().reshape(-1)
    if not bool(torch.isfinite(w.sum())) and not bool(torch.isfinite(w).all()):
        raise ValueError("inf or NaN in a task vector")  # merge_tensor names the input that holds it
    return w.float() if w.device.type == "cpu" else w


def _sorted(chosen: torch.Tensor, n: int) -> MaskKeep:
    kept = torch.zeros(n, dtype=torch.bool)
    kept[chosen] = True
    keep = MaskKeep(n)
    keep.store(0, kept)
    return keep


def _top(deltas, k: int, *, ties_low: bool) -> TopKeep:
    if k <= 0:
        return TopKeep.nothing(deltas.buffer)
    if k >= deltas.n:
        return TopKeep.everything(deltas.buffer)
    return select_top(deltas.part, deltas.n, deltas.chunk, k, ties_low=ties_low, like=deltas.buffer,
                      bins_of=deltas.key_dtype, keys=deltas.keys)


def _rescaled(deltas, keep, gp, *, work=None, whole=None):
    """`keep`, followed by mergekit's L1 rescale where the method rescales: the factor Σ|δ| / Σ|kept δ| in the
    sparsifier's dtype (none when either sum is below 1e-7). The sums are torch's over the whole task vector, as
    mergekit's are: a slice-wise sum would add in another order."""
    if not gp["rescale"]:
        return keep
    work = work or deltas.dtype
    magnitudes = (deltas.whole() if whole is None else whole).to(work).abs_()
    before = magnitudes.sum()
    scratch = torch.empty(min(deltas.chunk, deltas.n), dtype=work)
    for start in range(0, deltas.n, deltas.chunk):
        keep.apply_(magnitudes[start:start + deltas.chunk], start, scratch)
    factor = _l1_factor(before, magnitudes.sum(), deltas.compute)
    return keep if factor is None else Rescaled(keep, factor)


def _l1_factor(before: torch.Tensor, after: torch.Tensor, compute: torch.dtype) -> torch.Tensor | None:
    """mergekit's L1 rescale factor before / after (Σ|δ| over Σ|kept δ|) as the sums' dtype holds it, in `compute`;
    None (no rescale) when either sum is below L1_EPS."""
    if before < L1_EPS or after < L1_EPS:
        return None
    return (before / after).to(compute)


L1_EPS = 1e-7  # below this an L1 norm is not matched (mergekit's tolerance)


# ---- the merge --------------------------------------------------------------------------------------------------

def _merge(tensors, base, params, global_params, generator, *, sparsify, consensus, half=None, out_dtype=None,
           out=None):
    """mergekit's generalized task arithmetic, operation by operation, on float32 (float64) operands rounded to
    `half` wherever mergekit holds a tensor in it: mergekit's bits for a half-precision config, at float32 speed.
    Every step but the sparsifiers' choices is elementwise or a sum over the models, so it runs over cache-sized
    slices of every input at once with buffers allocated once; only the choices, made first, see whole task
    vectors, recomputed a slice at a time. Peak: the inputs, the output and the slice buffers, plus one task
    vector where the L1 rescale needs its sums and a bit per entry per model for random choices."""
    n = len(tensors)
    if not n:
        return base if out_dtype is None else base.to(out_dtype)  # merge_tensor copies it into `out`
    fused = _fused(tensors, base, params, global_params, generator, sparsify, consensus, half, out_dtype, out)
    if fused is not None:
        return fused
    chunk = _chunk()
    size = base.numel()
    compute = compute_dtype([base, *tensors])
    rounding = Rounding(half, min(chunk, size), base.device)
    deltas = [Deltas(x, base, compute, rounding, chunk, index=i) for i, x in enumerate(tensors)]
    keeps = [sparsify(d, p, global_params, generator) for d, p in zip(deltas, params)]
    weights = _weights(params, half, compute)
    work = _Buffers(n, min(chunk, size), compute, base.device)
    flat_base = base.reshape(-1)
    result = out
    out = torch.empty(size, dtype=out_dtype or half or base.dtype, device=base.device) if out is None else out.view(-1)
    divisor = None if consensus else _plain_normaliser(weights, half)
    for start in range(0, size, chunk):
        m = min(chunk, size - start)
        b = flat_base[start:start + m]
        wide_b = b if b.dtype == compute else work.base[:m].copy_(b)
        D = work.D[:, :m]
        for i, (d, keep) in enumerate(zip(deltas, keeps)):
            d.part(start, out=D[i], base=wide_b)
            if keep is not None:
                keep.apply_(D[i], start, work.scratch)
                if isinstance(keep, Rescaled):
                    rounding(D[i])
        rounding(D.mul_(weights))
        mixed = _combine(D, weights, consensus, work, m, rounding)
        if global_params["normalize"]:
            rounding(mixed.div_(work.divisor[:m] if consensus else divisor))
        if global_params["lambda"] != 1:
            rounding(mixed.mul_(global_params["lambda"]))
        part = out[start:start + m]
        pages.ready(part)
        if part.dtype == compute and half is None:
            torch.add(wide_b, mixed, out=part)
        else:
            total = mixed.add_(wide_b)
            if half is not None and part.dtype != half:
                rounding(total)  # mergekit's half-precision result, then written in another dtype
            part.copy_(total)  # rounded once, from float32: the half-precision sum's bits
        _done_with(b, part)
    return out.view(base.shape) if result is None else result


def _fused(tensors, base, params, global_params, generator, sparsify, consensus, half, out_dtype, out):
    """The merge by the compiled kernels (_fused_half.py) where they compute it: everything bf16 or fp16 on the CPU;
    no sparsifier, magnitude (`tie_break: index`) without the L1 rescale, or (bf16) DARE's random draws with or
    without it; None otherwise."""
    if half not in (torch.bfloat16, torch.float16) or (out_dtype or half) != half or base.numel() == 0:
        return None
    if sparsify is _random and half != torch.bfloat16:  # fp16's draws and L1 sums are float32 (_draw_dtype)
        return None
    if sparsify not in (_none, _magnitude, _random) or global_params.get("tie_break", "index") != "index":
        return None
    if (global_params["rescale"] and sparsify is not _random) or base.device.type != "cpu":
        return None
    from . import _fused_half  # numba: imported by the first merge that uses it, not by every command

    if not _fused_half.applies(tensors, base, out):
        return None
    n = base.numel()
    random = sparsify is _random
    keep = [None if sparsify is not _magnitude else _top_count(n, p["density"]) for p in params]
    masks, factors = (_random_masks(tensors, base, params, global_params, generator) if random
                      else (_fused_half.NO_MASKS, None))
    weights = _weights(params, half, torch.float32)
    divisor = float(_plain_normaliser(weights, half)) if global_params["normalize"] else 1.0
    result = torch.empty(base.shape, dtype=half) if out is None else out
    _fused_half.merge(tensors, base, keep, weights.view(-1).tolist(), consensus=consensus,
                      normalize=global_params["normalize"], divisor=divisor, lam=global_params["lambda"], out=result,
                      masks=masks, factors=factors)
    return result


def _random_masks(tensors, base, params, global_params, generator):
    """DARE's choices for the compiled path: each model's draws as bits (all set where density >= 1: nothing is
    dropped) and its L1 rescale factor (1: none), drawn and summed as `_random` and `_rescaled` do."""
    from . import _fused_half

    n = base.numel()
    masks = np.full((len(tensors), (n + 7) // 8), 0xFF, np.uint8)
    factors = np.ones(len(tensors), np.float32)
    chunk = _chunk()
    for i, (x, p) in enumerate(zip(tensors, params)):
        if p["density"] >= 1:
            continue
        masks[i] = _drawn(n, p["density"], _draw_dtype(torch.bfloat16, base.device), generator, base.device,
                          chunk).bits
        if global_params["rescale"]:
            factor = _l1_factor(*_fused_half.l1_sums(base, x, masks[i]), torch.float32)
            factors[i] = 1.0 if factor is None else float(factor)
    return masks, factors


def _chunk() -> int:
    """Entries per slice: _common.CHUNK, a multiple of 8 (random choices are stored 8 to a byte)."""
    return max(8, _common.CHUNK // 8 * 8)


def _weights(params, half: torch.dtype | None, compute: torch.dtype) -> torch.Tensor:
    """The models' weights as mergekit's dtype holds them (rounded to `half`), in `compute`, one row per model."""
    return torch.tensor([p["weight"] for p in params], dtype=half or compute).to(compute).reshape(-1, 1)


def _plain_normaliser(weights: torch.Tensor, half: torch.dtype | None) -> torch.Tensor:
    """Σ wᵢ in mergekit's dtype, a zero sum counting as 1: the normaliser without sign consensus."""
    total = _sum_over_models(weights, torch.empty(1, dtype=weights.dtype), half)
    if half is not None:
        total = total.to(half).to(weights.dtype)
    total[total.abs() < 1e-8] = 1
    return total


class _Buffers:
    """Each slice's temporaries, reused from slice to slice and, kept by `_common.scratch`, from tensor to tensor:
    fresh large allocations would page-fault on every use (the allocator returns them to the system), which costs
    more than the arithmetic."""

    def __init__(self, n: int, size: int, dtype: torch.dtype, device: torch.device):
        def new(key: str, rows: int | None = None) -> torch.Tensor:
            flat = _common.scratch(("task vectors", key), (rows or 1) * size, dtype, device)
            return flat if rows is None else flat.view(rows, size)

        self.D, self.sign, self.product = new("D", n), new("sign", n), new("product", n)
        self.mixed, self.divisor, self.elected, self.base, self.scratch = (
            new(k) for k in ("mixed", "divisor", "elected", "base", "scratch"))


def _sum_over_models(x: torch.Tensor, out: torch.Tensor, half: torch.dtype | None) -> torch.Tensor:
    """x.sum(dim=0) as mergekit's dtype computes it: a half-precision sum adds the models in order in float32
    (rounded once, by the caller); a float32 sum is torch's own (which may pair the models otherwise)."""
    if half is None:
        return torch.sum(x, dim=0, out=out)
    torch.add(x[0], x[1], out=out) if len(x) > 1 else out.copy_(x[0])
    for row in x[2:]:
        out.add_(row)
    return out


def _combine(D, weights, consensus, work, m, rounding):
    """Σ wᵢδᵢ over the models, under consensus only the entries whose sign is the elected one (the sign of the
    sum, zero counting as +), with their Σ wᵢ into work.divisor (a zero sum counting as 1): mergekit's get_mask
    and sums, rounded where mergekit's are."""
    half = rounding.half
    mixed = work.mixed[:m]
    if not consensus:
        return rounding(_sum_over_models(D, mixed, half))
    sign, product, elected = work.sign[:, :m], work.product[:, :m], work.elected[:m]
    torch.sign(D, out=sign)
    total = rounding(_sum_over_models(D, elected, half))  # a rounded sum keeps its sign, but -tiny may become -0
    torch.ge(total, 0, out=elected).mul_(2).sub_(1)  # -0 >= 0: elected +
    agree = torch.eq(sign, elected, out=sign)  # 1.0 where the entry's sign is the elected one
    if half is None:  # torch's float32 sum over the models, as mergekit's
        rounding(_sum_over_models(torch.mul(D, agree, out=product), mixed, half))
        div = _sum_over_models(torch.mul(weights, agree, out=product), work.divisor[:m], half)
    else:  # in order in float32; each product is exact (a 0/1 factor), so a fused multiply-add rounds as a sum does
        torch.mul(D[0], agree[0], out=mixed)
        div = torch.mul(agree[0], float(weights[0]), out=work.divisor[:m])
        for i in range(1, len(D)):
            mixed.addcmul_(D[i], agree[i])
            div.add_(agree[i], alpha=float(weights[i]))
        rounding(mixed)
        rounding(div)
    div.add_(torch.eq(div, 0, out=elected))  # a zero divisor counts as 1
    return mixed


def _family_member(name, *, sparsify, consensus, normalize, rescale, extra=None, extra_global=None, check=None,
                   title="", reference=""):
    def fn(tensors, base, params, global_params, generator=None, out_dtype=None, out=None):
        return _merge(tensors, base, params, global_params, generator, sparsify=sparsify, consensus=consensus,
                      out_dtype=out_dtype, out=out)

    def in_half_precision(tensors, base, params, global_params, generator=None, out=None):
        return _merge(tensors, base, params, global_params, generator, sparsify=sparsify, consensus=consensus,
                      half=base.dtype, out=out)

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
                **(extra_global or {}),
            },
            base="required",
            random=sparsify in (_random, _rank),
            calling="streaming",
            check=check,
            title=title,
            reference=reference,
            native=in_half_precision,
        )
    )
    return fn


TIE_BREAK = Param(str, "index", choices=TIE_BREAKS,
                  help="equal magnitudes at the cut: taken in index order (same on every machine), or as "
                       "torch.argsort orders them here (mergekit's bits on this machine; a full sort)")
GAMMA = Param(float, 0.01, low=0.0, high=1.0, help="fraction of largest-magnitude entries dropped")
EPSILON = Param(float, 0.15, low=0.0, high=1.0, high_open=True, help="spread of keep probabilities around density")

# One row per member: its sparsifier, sign election and defaults (the table in the module docstring).
task_arithmetic = _family_member("task_arithmetic", sparsify=_none, consensus=False, normalize=False, rescale=False,
                                 title="Editing Models with Task Arithmetic (Ilharco et al., ICLR 2023)",
                                 reference="https://arxiv.org/abs/2212.04089")
ties = _family_member("ties", sparsify=_magnitude, consensus=True, normalize=True, rescale=False,
                      extra_global={"tie_break": TIE_BREAK},
                      title="TIES-Merging: Resolving Interference When Merging Models (Yadav et al., NeurIPS 2023)",
                      reference="https://arxiv.org/abs/2306.01708")
dare_ties = _family_member("dare_ties", sparsify=_random, consensus=True, normalize=False, rescale=True,
                           title="Language Models are Super Mario (DARE; Yu et al., ICML 2024)",
                           reference="https://arxiv.org/abs/2311.03099")
dare_linear = _family_member("dare_linear", sparsify=_random, consensus=False, normalize=False, rescale=True,
                             title="Language Models are Super Mario (DARE; Yu et al., ICML 2024)",
                             reference="https://arxiv.org/abs/2311.03099")
breadcrumbs = _family_member("breadcrumbs", sparsify=_outliers, consensus=False, normalize=False, rescale=False,
                             extra={"gamma": GAMMA}, extra_global={"tie_break": TIE_BREAK},
                             title="Model Breadcrumbs (Davari and Belilovsky, ECCV 2024)",
                             reference="https://arxiv.org/abs/2312.06795")
breadcrumbs_ties = _family_member("breadcrumbs_ties", sparsify=_outliers, consensus=True, normalize=False,
                                  rescale=False, extra={"gamma": GAMMA}, extra_global={"tie_break": TIE_BREAK},
                                  title="Model Breadcrumbs (Davari and Belilovsky, ECCV 2024)",
                                  reference="https://arxiv.org/abs/2312.06795")
della = _family_member("della", sparsify=_rank, consensus=True, normalize=True, rescale=True,
                       extra={"epsilon": EPSILON}, check=check_della_epsilon,
                       title="DELLA-Merging (Deep et al., 2024)",
                       reference="https://arxiv.org/abs/2406.11617")
della_linear = _family_member("della_linear", sparsify=_rank, consensus=False, normalize=False, rescale=True,
                              extra={"epsilon": EPSILON}, check=check_della_epsilon,
                              title="DELLA-Merging (Deep et al., 2024)",
                              reference="https://arxiv.org/abs/2406.11617")
