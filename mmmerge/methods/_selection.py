"""What the sparsifiers of the task-vector methods keep, found slice by slice so no full-size copy is made.

A `Keep` zeroes what a sparsifier drops in one slice of a task vector, as mergekit's `delta * mask` does (a
dropped entry keeps its sign: -x·0 is -0), and applies the L1 rescale factor where the method rescales.

TIES and breadcrumbs keep the entries of largest magnitude. mergekit ranks them with `torch.argsort`, a full sort
of the whole tensor; here a histogram of the magnitudes' bit patterns finds the cut value, and where the ties
at the cut end is found by a second scan, or, for the low end, counted during the merge's own pass (`TieCount`).
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

    def __init__(self, cut: torch.Tensor, split: int | None, *, ties_low: bool, ties: "TieCount | None" = None):
        self.cut, self.split, self.ties_low, self.ties = cut, split, ties_low, ties
        self.below = previous_value(cut)  # |x| > below  <=>  |x| >= cut, in cut's dtype

    @classmethod
    def everything(cls, like: torch.Tensor) -> "TopKeep":
        return cls(torch.zeros((), dtype=like.dtype), 0, ties_low=False)

    @classmethod
    def nothing(cls, like: torch.Tensor) -> "TopKeep":
        return cls(torch.tensor(float("inf"), dtype=like.dtype), 0, ties_low=True)

    def apply_(self, d: torch.Tensor, start: int, scratch: torch.Tensor) -> torch.Tensor:
        if self.split is None:  # the ties at the cut are counted as the slices come
            self.split = self.ties.count(d, start, scratch)
            at = d.numel() if self.split is None else min(max(self.split - start, 0), d.numel())
        else:
            at = min(max(self.split - start, 0), d.numel())
        before, after = (self.below, self.cut) if self.ties_low else (self.cut, self.below)
        kept = scratch[:d.numel()]
        # hardshrink zeroes |x| <= lambda in one pass; copysign gives each zero its entry's sign, as x·0 does
        torch.hardshrink(d[:at], float(before), out=kept[:at])
        torch.hardshrink(d[at:], float(after), out=kept[at:])
        return torch.copysign(kept, d, out=d)

    def kept(self, d: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The kept entries of a slice (positions start..), as booleans."""
        if self.split is None:
            self.split = self.ties.finish()
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


def select_top(part: Part, n: int, chunk: int, k: int, *, ties_low: bool, like: torch.Tensor,
               bins_of: torch.dtype | None = None, keys: Part | None = None) -> TopKeep:
    """The k (0 < k < n) entries of largest magnitude, without a sort: a histogram of `magnitude_keys` over every
    slice finds the bin of the k-th largest; unless each bin is one value (half precision; or `bins_of`, the half
    dtype whose bit patterns `keys` returns for float32 values rounded to it) that bin's entries are ranked
    exactly; a last scan finds where the kept ties at the cut end, in index order from the low end (`ties_low`)
    or the high end. `keys`: start -> the slice's `magnitude_keys`, where the caller has a cheaper way to them
    than from `part`."""
    keys = keys or (lambda start: magnitude_keys(part(start)))
    counts = torch.zeros(BINS, dtype=torch.int64)
    for start in range(0, n, chunk):
        counts += torch.bincount(keys(start), minlength=BINS)
    if like.dtype in HALF:
        bins_of = like.dtype
    if int(counts[_INF_KEY[bins_of or like.dtype]:].sum()):
        raise ValueError("inf or NaN in a task vector")  # merge_tensor names the input that holds it
    at_or_above = counts.flip(0).cumsum(0).flip(0)
    b = int((at_or_above >= k).nonzero()[-1])
    need = k - int(at_or_above[b] - counts[b])  # how many of bin b's entries are kept: 1..counts[b]
    if bins_of is not None:
        cut = torch.tensor([b], dtype=torch.int16).view(bins_of).to(like.dtype).reshape(())
    else:
        inside = torch.cat([d.abs()[magnitude_keys(d) == b] for d in map(part, range(0, n, chunk))])
        cut = torch.kthvalue(inside, inside.numel() - need + 1).values
        need -= int((inside > cut).sum())

        def equal(d):
            return d.abs() == cut
    if ties_low and bins_of is not None:  # the merge's own pass over the slices counts the ties: no scan here
        return TopKeep(cut, None, ties_low=True, ties=TieCount(cut, need, lambda start: keys(start) == b, n, chunk))
    starts = range(0, n, chunk) if ties_low else reversed(range(0, n, chunk))
    for start in starts:
        at = (keys(start) == b if bins_of is not None else equal(part(start))).nonzero().squeeze(1)
        if need <= at.numel():
            split = start + int(at[need - 1]) + 1 if ties_low else start + int(at[at.numel() - need])
            return TopKeep(cut, split, ties_low=ties_low)
        need -= at.numel()
    raise AssertionError("the histogram and the scan disagree")  # unreachable: the same slices are counted


class TieCount:
    """Where the `need` entries equal to the cut that a top-k keeps end, in index order, found from the slices a
    merge applies its keep to in order (an entry of a slice equals the cut when its magnitude does), so no scan
    of its own reads the task vector again; slices applied out of order are scanned with `ties`."""

    def __init__(self, cut: torch.Tensor, need: int, ties: Part, n: int, chunk: int):
        self.cut, self.need, self.ties, self.n, self.chunk = cut, need, ties, n, chunk
        self.counted = 0  # the ties before this position are counted

    def count(self, d: torch.Tensor, start: int, scratch: torch.Tensor) -> int | None:
        """The split, once the slice of `d` (positions start..) holds the last kept tie; None before."""
        if start != self.counted:
            split = self._scan_to(start)
            if split is not None or start < self.counted:
                return split if split is not None else self.finish()
        equal = torch.eq(torch.abs(d.reshape(-1), out=scratch[:d.numel()]), self.cut)
        return self._take(equal, start, d.numel())

    def finish(self) -> int:
        split = self._scan_to(self.n)
        if split is None:
            raise AssertionError("the histogram and the scan disagree")  # unreachable: the same slices are counted
        return split

    def _scan_to(self, end: int) -> int | None:
        while self.counted < end:
            split = self._take(self.ties(self.counted), self.counted, min(self.chunk, self.n - self.counted))
            if split is not None:
                return split
        return None

    def _take(self, equal: torch.Tensor, start: int, size: int) -> int | None:
        found = int(equal.sum())
        if self.need <= found:
            return start + int(equal.nonzero()[self.need - 1]) + 1
        self.need -= found
        self.counted = start + size
        return None
