"""What the sparsifiers of the task-vector methods keep, found slice by slice so no full-size copy is made.

A `Keep` zeroes what a sparsifier drops in one slice of a task vector, as mergekit's `delta * mask` does (a
dropped entry keeps its sign: -x·0 is -0), and applies the L1 rescale factor where the method rescales.

TIES and breadcrumbs keep the entries of largest magnitude. mergekit ranks them with `torch.argsort`, a full sort
of the whole tensor; here a histogram of the magnitudes' bit patterns finds the cut value, and a second scan of
the few slices around the deciding tie (found from snapshots of the histogram) finds where the ties at the cut end.
For bfloat16 and float16 each histogram bin is one value, so the cut is exact from the histogram alone; float32
refines the one bin holding it.

Ties at the cut: how many equal magnitudes are kept is fixed by k, but which of them an unstable sort keeps is
a detail of the sort's implementation. torch on the CPU sorts with x86-simd-sort where the CPU has AVX-512 and
with other code elsewhere, so mergekit's own choice differs between machines (and on a GPU). `tie_break: index`
(the default) takes them in index order, as a stable sort does, the same on every machine; `tie_break: sort`
calls `torch.argsort` as mergekit does, for mergekit's bits on this machine, at the sort's cost in time and
memory.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

BINS = 1 << 15
HALF = (torch.bfloat16, torch.float16)
TIE_BREAKS = ("index", "sort")

_INF_KEY = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00, torch.float32: 0x7F80, torch.float64: 0x7FF0}  # |inf|'s key
Part = Callable[[int], torch.Tensor]  # start -> the task vector's entries start .. start + chunk (flat)


def magnitude_keys(d: torch.Tensor) -> torch.Tensor:
    """One integer in [0, 2^15) per entry, ordered as |d| is: the whole bit pattern less the sign for half
    precision (one key per value), the top 16 bits for float32 and float64 (a bucket of values)."""
    if d.dtype in HALF:
        return d.view(torch.int16) & 0x7FFF
    if d.dtype == torch.float32:
        return (d.view(torch.int32) >> 16) & 0x7FFF
    return ((d.view(torch.int64) >> 48) & 0x7FFF).to(torch.int32)


class TopKeep:
    """Entries whose magnitude exceeds `cut`, and those equal to it on one side of position `split`: before it
    (`ties_low`, a stable descending sort's order) or from it on (a stable ascending sort's top)."""

    def __init__(self, cut: torch.Tensor, split: int, *, ties_low: bool):
        self.cut, self.split, self.ties_low = cut, split, ties_low
        self.below = previous_value(cut)  # |x| > below  <=>  |x| >= cut, in cut's dtype

    @classmethod
    def everything(cls, like: torch.Tensor) -> "TopKeep":
        return cls(torch.zeros((), dtype=like.dtype), 0, ties_low=False)

    @classmethod
    def nothing(cls, like: torch.Tensor) -> "TopKeep":
        return cls(torch.tensor(float("inf"), dtype=like.dtype), 0, ties_low=True)

    def apply_(self, d: torch.Tensor, start: int, scratch: torch.Tensor) -> torch.Tensor:
        at = min(max(self.split - start, 0), d.numel())
        before, after = (self.below, self.cut) if self.ties_low else (self.cut, self.below)
        kept = scratch[:d.numel()]
        # hardshrink zeroes |x| <= lambda in one pass; copysign gives each zero its entry's sign, as x·0 does
        torch.hardshrink(d[:at], float(before), out=kept[:at])
        torch.hardshrink(d[at:], float(after), out=kept[at:])
        return torch.copysign(kept, d, out=d)

    def kept(self, d: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The kept entries of a slice (positions start..), as booleans."""
        flat = d.reshape(-1).abs()
        kept, tie = flat > self.cut, flat == self.cut
        at = min(max(self.split - start, 0), flat.numel())
        side = slice(0, at) if self.ties_low else slice(at, None)
        kept[side] |= tie[side]
        return kept

    def mask(self, values: torch.Tensor) -> torch.Tensor:
        """The kept entries of a whole tensor, as booleans."""
        return self.kept(values).view(values.shape)


def previous_value(x: torch.Tensor) -> torch.Tensor:
    """The largest value of x's dtype below x (x >= 0); -1 below zero."""
    if float(x) <= 0:
        return torch.tensor(-1.0, dtype=x.dtype)
    if x.dtype in HALF:
        return (x.reshape(1).view(torch.int16) - 1).view(x.dtype).reshape(())
    return torch.nextafter(x, x.new_tensor(float("-inf")))


class BandKeep:
    """breadcrumbs' middle band: what `outer` keeps less what `inner` (a subset of it) keeps."""

    def __init__(self, outer: TopKeep, inner: TopKeep):
        self.outer, self.inner = outer, inner

    def apply_(self, d: torch.Tensor, start: int, scratch: torch.Tensor) -> torch.Tensor:
        band = self.outer.kept(d, start) & ~self.inner.kept(d, start)
        return d.mul_(scratch[:d.numel()].copy_(band))

    def mask(self, values: torch.Tensor) -> torch.Tensor:
        return self.outer.mask(values) & ~self.inner.mask(values)


class MaskKeep:
    """Kept entries as one bit each: a random draw per entry, or a sort's choice."""

    def __init__(self, n: int):
        self.bits = np.zeros((n + 7) // 8, dtype=np.uint8)

    def store(self, start: int, kept: torch.Tensor) -> None:
        """Record the nonzero entries of `kept` (booleans, or 0/1 draws) for positions start.. (a multiple of 8:
        slices are). numpy compares half-precision draws by their bits: torch's comparison of them is 10x slower."""
        flat = kept.reshape(-1)
        if flat.dtype in HALF:
            flat = flat.view(torch.int16) & 0x7FFF
        packed = np.packbits(flat.numpy() != 0)
        self.bits[start // 8:start // 8 + packed.size] = packed

    def kept(self, start: int, n: int) -> torch.Tensor:
        first = start // 8
        return torch.from_numpy(np.unpackbits(self.bits[first:(start + n + 7) // 8])[start - first * 8:][:n])

    def apply_(self, d: torch.Tensor, start: int, scratch: torch.Tensor) -> torch.Tensor:
        return d.mul_(scratch[:d.numel()].copy_(self.kept(start, d.numel())))


class Rescaled:
    """A keep followed by mergekit's L1 rescale: masked · (Σ|δ| / Σ|kept δ|), the factor as the sparsifier's dtype
    holds it (the caller rounds the product to the task vector's dtype)."""

    def __init__(self, keep, factor: torch.Tensor):
        self.keep, self.factor = keep, factor

    def apply_(self, d: torch.Tensor, start: int, scratch: torch.Tensor) -> torch.Tensor:
        return self.keep.apply_(d, start, scratch).mul_(self.factor)


SNAPSHOTS = 64  # times the histogram is kept during its pass: the tie scan then reads at most 1/64 of the slices


def cut_in_counts(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """(b, need): the bin of the k-th largest entry in a histogram of magnitude keys, and how many of its entries
    are kept (1..counts[b]) so that k are."""
    at_or_above = counts.flip(0).cumsum(0).flip(0)
    b = int((at_or_above >= k).nonzero()[-1])
    return b, k - int(at_or_above[b] - counts[b])


def select_top(part: Part, n: int, chunk: int, k: int, *, ties_low: bool, like: torch.Tensor,
               bins_of: torch.dtype | None = None, keys: Part | None = None) -> TopKeep:
    """The k (0 < k < n) entries of largest magnitude, without a sort: a histogram of `magnitude_keys` over every
    slice finds the bin of the k-th largest; unless each bin is one value (half precision; or `bins_of`, the half
    dtype whose bit patterns `keys` returns for float32 values rounded to it) that bin's entries are ranked
    exactly; a last scan finds where the kept ties at the cut end, in index order from the low end (`ties_low`)
    or the high end. With one value per bin the histogram is kept (`SNAPSHOTS` times) as it is counted, so that
    scan reads only the slices between the two snapshots around the deciding tie. `keys`: start -> the slice's
    `magnitude_keys`, where the caller has a cheaper way to them than from `part`."""
    keys = keys or (lambda start: magnitude_keys(part(start)))
    if like.dtype in HALF:
        bins_of = like.dtype
    starts = list(range(0, n, chunk))
    every = -(-len(starts) // SNAPSHOTS)
    counts = torch.zeros(BINS, dtype=torch.int64)
    marks = []  # (slices counted, the histogram so far) at the end of each block of `every` slices
    for i, start in enumerate(starts):
        counts += torch.bincount(keys(start), minlength=BINS)
        if bins_of is not None and ((i + 1) % every == 0 or i + 1 == len(starts)):
            marks.append((i + 1, counts.to(torch.int32)))
    if int(counts[_INF_KEY[bins_of or like.dtype]:].sum()):
        raise ValueError("inf or NaN in a task vector")  # merge_tensor names the input that holds it
    b, need = cut_in_counts(counts, k)
    if bins_of is not None:
        cut = torch.tensor([b], dtype=torch.int16).view(bins_of).to(like.dtype).reshape(())
        # the split is at the m-th entry of bin b in index order: the need-th from the low end, or from the high end
        m = need if ties_low else int(counts[b]) - need + 1
        before, first = 0, 0
        for end, seen in marks:
            if int(seen[b]) >= m:
                break
            before, first = int(seen[b]), end
        for start in starts[first:end]:
            at = (keys(start) == b).nonzero().squeeze(1)
            if m - before <= at.numel():
                index = start + int(at[m - before - 1])
                return TopKeep(cut, index + 1 if ties_low else index, ties_low=ties_low)
            before += at.numel()
        raise AssertionError("the histogram and the scan disagree")  # unreachable: the same slices are counted
    inside = torch.cat([d.abs()[magnitude_keys(d) == b] for d in map(part, starts)])
    cut = torch.kthvalue(inside, inside.numel() - need + 1).values
    need -= int((inside > cut).sum())
    for start in (starts if ties_low else reversed(starts)):
        at = (part(start).abs() == cut).nonzero().squeeze(1)
        if need <= at.numel():
            split = start + int(at[need - 1]) + 1 if ties_low else start + int(at[at.numel() - need])
            return TopKeep(cut, split, ties_low=ties_low)
        need -= at.numel()
    raise AssertionError("the histogram and the scan disagree")  # unreachable: the same slices are counted
