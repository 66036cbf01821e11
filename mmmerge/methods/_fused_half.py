"""The task-vector family's half-precision merge on the CPU, compiled (numba): each pass over the inputs is one loop.

A bf16 TIES merge written in torch operations passes over every slice a dozen times (subtract, round, compare,
zero, weigh, round, sign, sum, ...), each pass a kernel of its own. Here the histogram pass (task vectors and their
magnitudes' counts) and the merge pass (task vectors, kept entries, weights, sign election, sums, division, base)
are one compiled loop each, over 2,048-entry blocks that stay in the first-level cache, run by several threads on
separate ranges (the kernels release the GIL). The arithmetic is the torch path's: float32 operations rounded to
bf16 or fp16 (to nearest, ties to even; fp16's subnormals and overflow as a conversion gives them) after every
operation whose result mergekit holds in half precision, the sums over the models in model order, so the bits are
the same (tests/test_fused_half.py checks them against the torch path). Each kernel is compiled once per half
dtype, told apart by the type of its `half` argument, so no branch on the dtype is left inside a loop.

Only the common cases are compiled: every input and the output in bf16 or fp16 on the CPU, sparsified by
magnitude (`tie_break: index`, no L1 rescale), by DARE's draws (bf16; with or without the rescale) or not at all.
task_arithmetic.py takes the torch path otherwise.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ..io import pages
from . import _common
from ._selection import cut_in_counts

BINS = 1 << 15
BF16, F16 = np.uint16(0), np.int16(0)  # the half dtype a kernel computes in, by the type of its `half` argument
HALVES = {torch.bfloat16: BF16, torch.float16: F16}
INF_KEYS = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}  # |inf|'s bit pattern: keys from it on are inf or NaN
BLOCK = 2048  # entries per inner block: a few float32 rows of it stay in the first-level cache
WINDOW = 1 << 20  # entries per thread between two releases of a large tensor's pages (2 MiB of each input)
ROWS = 16  # histograms kept per task vector (one per 1/16 of it): the tie scan reads at most one row's entries
ROW_MIN = 1 << 18  # entries: a smaller tensor has fewer rows


@intrinsic
def _float_of(typingctx, bits):
    """The low 32 bits of an integer as the float32 they encode."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bits_of(typingctx, value):
    """A float32's bit pattern, as a uint64 (numba's integer arithmetic widens to 64 bits anyway)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return types.uint64(value), codegen


_LOW = np.uint64(0x7FFF)
_ONE = np.uint64(1)
_SHIFT = np.uint64(16)
_HIGH = np.uint64(0xFFFF0000)
_ABS = np.uint64(0x7FFFFFFF)
_SIGN = np.uint64(0x80000000)
_INF32 = np.uint64(0x7F800000)
_F16_NORMAL = np.uint64(0x38800000)  # 2⁻¹⁴ as float32 bits: fp16's smallest normal
_F16_MAX = np.uint64(0x477FE000)  # 65504: fp16's largest finite
_F16_SPACING = np.float32(2.0 ** -24)  # fp16's subnormal spacing
_F16_RESCALE = np.float32(2.0 ** 24)
_HALF = np.float32(0.5)


def _widen(h, half):
    """A bf16 or fp16 bit pattern's value, as float32 (exact). `half`: BF16 or F16, whose type (not value) picks
    the code, at compile time, so no branch on it is left in a loop (one stops it from being vectorised)."""


def _round(f, half):
    """A float32 rounded to bf16 or fp16, to nearest, ties to even (the value stays float32); fp16 overflows to
    ±inf from 65520 on, as a conversion does."""


def _half_bits(f, half):
    """The bf16 or fp16 bit pattern of a float32 that the half dtype holds exactly (or inf/NaN)."""


@overload(_widen)
def _widen_code(h, half):
    if half == types.uint16:
        return lambda h, half: _float_of(np.uint64(h) << _SHIFT)

    def fp16(h, half):  # one return: an inlined overload with several leaves numba a pedantic warning
        h = np.uint64(h)
        sign = (h & np.uint64(0x8000)) << _SHIFT
        e = (h >> np.uint64(10)) & np.uint64(0x1F)
        m = h & np.uint64(0x3FF)
        tiny = np.float32(m) * _F16_SPACING  # zero or subnormal: m · 2⁻²⁴, exact in float32
        exponent = _INF32 if e == 31 else (e + np.uint64(112)) << np.uint64(23)
        wide = _float_of(sign | exponent | (m << np.uint64(13)))
        return wide if e != 0 else (-tiny if sign else tiny)

    return fp16


@overload(_round)
def _round_code(f, half):
    if half == types.uint16:
        def bf16(f, half):
            x = _bits_of(f)
            return _float_of((x + _LOW + ((x >> _SHIFT) & _ONE)) & _HIGH)

        return bf16

    def fp16(f, half):
        x = _bits_of(f)
        a = x & _ABS
        r = (a + np.uint64(0xFFF) + ((a >> np.uint64(13)) & _ONE)) & np.uint64(0xFFFFE000)
        normal = _float_of((x & _SIGN) | (_INF32 if r > _F16_MAX else r))
        # below fp16's normals its spacing is 2⁻²⁴, float32's at 0.5: adding 0.5 rounds to it, ties to even
        tiny = (_float_of(a) + _HALF) - _HALF
        small = -tiny if x & _SIGN else tiny
        return f if a >= _INF32 else (normal if a >= _F16_NORMAL else small)

    return fp16


@overload(_half_bits)
def _half_bits_code(f, half):
    if half == types.uint16:
        return lambda f, half: _bits_of(f) >> _SHIFT

    def fp16(f, half):
        x = _bits_of(f)
        sign = (x >> _SHIFT) & np.uint64(0x8000)
        a = x & _ABS
        m = (a >> np.uint64(13)) & np.uint64(0x3FF)
        special = np.uint64(0x7C00) | (np.uint64(0x200) if a > _INF32 and m == 0 else m)  # inf, NaN
        normal = (((a >> np.uint64(23)) - np.uint64(112)) << np.uint64(10)) | m
        small = np.uint64(_float_of(a) * _F16_RESCALE)
        return sign | (special if a >= _INF32 else (normal if a >= _F16_NORMAL else small))

    return fp16


@njit(nogil=True, cache=True, error_model="numpy")
def fp16_round_trip(f):
    """(f rounded to fp16, its bit pattern, the value those bits hold): the fp16 code, for tests."""
    r = _round(f, F16)
    bits = _half_bits(r, F16)
    return r, bits, _widen(np.uint16(bits), F16)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _key(f, half):
    """A half-precision value's magnitude key: its bit pattern less the sign (ordered as |f| is)."""
    return _half_bits(f, half) & _LOW


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _delta(x, b, half):
    """The task vector's entry x - b (half-precision bit patterns) as a half-precision subtraction gives it."""
    return _round(_widen(x, half) - _widen(b, half), half)


# Each kernel loops over slices indexed from 0: an index such as s + j could be negative as far as the compiler
# knows, and its wraparound test stops the loop from being vectorised (5x slower).

@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _keys(base, x, keys, half):
    """The magnitude keys of the task vector x - base (one block) into keys[:len(x)]: a loop of its own, which is
    vectorised, where a histogram's increments cannot be (2.4x faster than one loop doing both)."""
    for j in range(len(x)):
        keys[j] = np.uint16(_key(_delta(x[j], base[j], half), half))


@njit(nogil=True, cache=True, error_model="numpy")
def _counts(base, xs, counts, lo, hi, size, half):
    """Adds to counts[i, r] the histogram of the magnitude keys of the task vector xs[i] - base over the entries
    lo..hi that lie in row r (entries r·size .. (r+1)·size)."""
    keys = np.empty(BLOCK, np.uint16)
    s = lo
    while s < hi:
        m = min(BLOCK, hi - s, size - s % size)  # a block never straddles two rows
        r = s // size
        for i in range(len(xs)):
            _keys(base[s:s + m], xs[i][s:s + m], keys, half)
            row = counts[i, r]
            for j in range(m):
                row[keys[j]] += 1
        s += m


@njit(nogil=True, cache=True, error_model="numpy")
def _find(base, x, key, count, half):
    """The index of the count-th entry (from 1) of the task vector x - base whose magnitude key is `key`; -1 if
    there are fewer."""
    keys = np.empty(BLOCK, np.uint16)
    seen = 0
    for s in range(0, len(x), BLOCK):
        m = min(BLOCK, len(x) - s)
        _keys(base[s:s + m], x[s:s + m], keys, half)
        for j in range(m):
            if keys[j] == key:
                seen += 1
                if seen == count:
                    return s + j
    return -1


@njit(nogil=True, cache=True, error_model="numpy")
def _magnitudes(base, x, out, half):
    """out = |x - base| (half-precision bit patterns): the task vector's magnitudes, whose sums the L1 rescale compares."""
    for j in range(len(x)):
        out[j] = np.uint16(_key(_delta(x[j], base[j], half), half))


@njit(nogil=True, cache=True, error_model="numpy")
def _drop(values, packed):
    """values[j] = 0 where bit j is not set in `packed` (np.packbits' order), a block at a time."""
    kept = np.empty(BLOCK, np.uint8)
    for s in range(0, len(values), BLOCK):
        v = values[s:s + BLOCK]
        _unpack(packed[s >> 3:(s + len(v) + 7) >> 3], kept)
        for j in range(len(v)):
            v[j] = v[j] if kept[j] else 0


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _unpack(packed, out):
    """out[8q + k] = bit k of packed[q] (np.packbits' order: the first in the highest bit), 0 or 1, for every byte
    of `packed`: a loop of its own, over slices, which is vectorised where one indexed by bit is not (3x)."""
    for q in range(len(packed)):
        byte, eight = packed[q], out[8 * q:8 * q + 8]
        for k in range(8):
            eight[k] = (byte >> np.uint8(7 - k)) & np.uint8(1)


@njit(nogil=True, cache=True, error_model="numpy")
def _merge_range(base, xs, out, lo, hi, cut, split, masks, factors, weights, consensus, normalize, divisor, lam, half):
    """out[lo:hi] = base + lam · Σᵢ wᵢ·keepᵢ(xᵢ − base) [· agreement] [/ normaliser], half-precision bit patterns in
    and out, every operation rounded to the half dtype as mergekit's half-precision tensors are (`divisor`: 1 unless normalize). keep i: |δ|'s
    key > cut[i], or == cut[i] at an index below split[i]; with cut[i] < 0, everything, or where `masks` has a row
    per model, the entries whose bit is set in masks[i] (np.packbits' order), times factors[i] (DARE's L1 rescale;
    1 changes no half-precision value). Under consensus the elected sign is the rounded sum's in model order (zero counting
    as +) and the normaliser the agreeing models' Σ wᵢ, a disagreeing entry adding δ·0 and w·0 as mergekit's mask
    product does. A block at a time, one pass per model and step, so that every loop is vectorised."""
    n = len(xs)
    fd = np.empty((n, BLOCK), np.float32)  # each model's weighted, kept task vector
    kept = np.empty(BLOCK, np.uint8)  # a block's bits of `masks`, one byte each
    total = np.empty(BLOCK, np.float32)  # the sum electing the sign, then the sign: +1 (zero counting as +) or -1
    weight = np.empty(BLOCK, np.float32)  # the agreeing models' Σ wᵢ
    zero = np.float32(0.0)
    for s in range(lo, hi, BLOCK):
        m = min(BLOCK, hi - s)
        b = base[s:s + m]
        for i in range(n):
            x, d, first, w = xs[i][s:s + m], fd[i], split[i] - s, weights[i]
            if cut[i] < 0 and len(masks):  # s is a multiple of 8 (_windows): the block's bits start a byte
                f = factors[i]
                _unpack(masks[i][s >> 3:(s + m + 7) >> 3], kept)
                for j in range(m):
                    v = _delta(x[j], b[j], half)
                    d[j] = _round(_round((v if kept[j] else v * zero) * f, half) * w, half)
            elif cut[i] < 0:
                for j in range(m):
                    d[j] = _round(_delta(x[j], b[j], half) * w, half)
            else:
                c = np.uint64(cut[i])
                for j in range(m):
                    v = _delta(x[j], b[j], half)
                    k = _key(v, half)
                    dropped = (k < c) | ((k == c) & (j >= first))  # bitwise: no branch in the loop
                    d[j] = _round((v * zero if dropped else v) * w, half)  # dropped: a zero of the entry's sign
            if consensus:  # the sum electing the sign, in model order
                if i == 0:
                    for j in range(m):
                        total[j] = d[j]
                else:
                    for j in range(m):
                        total[j] = total[j] + d[j]
        mixed = fd[0]
        if consensus:
            for j in range(m):
                total[j] = np.float32(1.0) if _round(total[j], half) >= 0 else np.float32(-1.0)  # the elected sign
            for i in range(n):
                d, w = fd[i], weights[i]
                for j in range(m):
                    v = d[j]
                    agree = v * total[j] > 0  # exact: a sign flip at most
                    if i == 0:
                        mixed[j] = v if agree else v * zero
                        weight[j] = w if agree else w * zero
                    else:
                        mixed[j] = mixed[j] + (v if agree else v * zero)
                        weight[j] = weight[j] + (w if agree else w * zero)
        else:
            for i in range(1, n):
                d = fd[i]
                for j in range(m):
                    mixed[j] = mixed[j] + d[j]
        if consensus and normalize:
            for j in range(m):
                a = _round(weight[j], half)
                weight[j] = a + np.float32(1.0) if a == 0 else a
        else:
            for j in range(m):
                weight[j] = divisor
        o = out[s:s + m]
        for j in range(m):  # dividing by 1 and multiplying by lam = 1 change no half value
            v = _round(_round(_round(mixed[j], half) / weight[j], half) * lam, half)
            o[j] = np.uint16(_half_bits(_round(v + _widen(b[j], half), half), half))


# ---- the driver ---------------------------------------------------------------------------------------------------

_POOLS: dict[int, ThreadPoolExecutor] = {}  # threads -> a pool of them, made once
SERIAL_BELOW = 1 << 16  # entries: a smaller tensor is merged by the calling thread alone
NO_MASKS = np.zeros((0, 0), np.uint8)  # no model's entries kept by random draws


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _parallel(fn, calls: list[tuple]) -> None:
    """fn(*args) for each args in `calls`, each on a thread of its own (the kernels release the GIL)."""
    if len(calls) == 1:
        fn(*calls[0])
        return
    pool = _POOLS.get(len(calls))
    if pool is None:
        pool = _POOLS[len(calls)] = ThreadPoolExecutor(len(calls), thread_name_prefix="mmmerge-half")
    for done in [pool.submit(fn, *args) for args in calls]:
        done.result()


def _ranges(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """lo..hi in consecutive ranges of `size` entries (the last one shorter)."""
    return [(s, min(s + size, hi)) for s in range(lo, hi, size)]


def _thread_ranges(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """lo..hi in `parts` ranges of whole blocks (the last one shorter), one per thread."""
    return _ranges(lo, hi, -(-(hi - lo) // parts // BLOCK) * BLOCK)


def bits(t: torch.Tensor) -> np.ndarray:
    """A contiguous half-precision tensor's bit patterns as a flat uint16 array (no copy)."""
    return t.reshape(-1).view(torch.int16).numpy().view(np.uint16)


def applies(tensors: list[torch.Tensor], base: torch.Tensor, out: torch.Tensor | None) -> bool:
    """Every input (and `out`) of one half dtype (bf16 or fp16), contiguous and on the CPU."""
    every = [base, *tensors, *([] if out is None else [out])]
    return base.dtype in HALVES and all(t.dtype == base.dtype and t.device.type == "cpu" and t.is_contiguous()
                                        for t in every)


def top_cuts(base: torch.Tensor, tensors: list[torch.Tensor], keep: list[int]) -> list[tuple[int, int]]:
    """For each task vector xᵢ - base and its k = keep[i] (0 < k < n), (key, split): its k entries of largest
    magnitude, ties at the cut taken in index order, are those whose magnitude key exceeds `key` and those equal to
    it at indices below `split`. One pass over the inputs counts every histogram, a row of them per 1/ROWS of the
    tensor, so that the entry deciding the tie is then looked for in one row only."""
    if not tensors:
        return []
    b, xs, n, half = bits(base), tuple(bits(x) for x in tensors), base.numel(), HALVES[base.dtype]
    rows = min(ROWS, max(1, n // ROW_MIN))
    size = -(-n // rows // BLOCK) * BLOCK
    rows = -(-n // size)
    parts = _threads() if n >= SERIAL_BELOW else 1
    counts = _zeroed((parts, len(tensors), rows, BINS))  # a set of histograms per thread
    for lo, hi in _windows(n, parts * WINDOW, base):
        _parallel(lambda t, a, z: _counts(b, xs, counts[t], a, z, size, half),
                  [(t, a, z) for t, (a, z) in enumerate(_thread_ranges(lo, hi, parts))])
        _release(base, *tensors, lo=lo, hi=hi)
    for other in counts[1:]:
        np.add(counts[0], other, out=counts[0])
    counts = counts[0]
    found = []
    for i, k in enumerate(keep):
        total = counts[i].sum(axis=0, dtype=np.int64)
        if total[INF_KEYS[base.dtype]:].any():
            raise ValueError("inf or NaN in a task vector")  # merge_tensor names the input that holds it
        key, need = cut_in_counts(torch.from_numpy(total), k)
        before = np.cumsum(counts[i, :, key], dtype=np.int64)
        row = int(np.searchsorted(before, need))  # the row holding the need-th entry of the cut's bin
        found.append((key, row, need - (int(before[row - 1]) if row else 0)))
    splits = [0] * len(found)

    def scan(i, _):
        key, row, count = found[i]
        lo = row * size
        at = _find(b[lo:lo + size], xs[i][lo:lo + size], key, count, half)
        if at < 0:
            raise AssertionError("the histogram and the scan disagree")  # unreachable: the same entries are counted
        splits[i] = lo + at + 1

    _parallel(scan, [(i, 0) for i in range(len(found))])
    for (key, row, _), x in zip(found, tensors):
        _release(base, x, lo=row * size, hi=min(n, (row + 1) * size))
    return [(key, split) for (key, _, _), split in zip(found, splits)]


def _windows(n: int, step: int, like: torch.Tensor) -> list[tuple[int, int]]:
    """0..n whole, or in windows of `step` entries for a tensor large enough to have its pages let go as a pass
    goes (io/pages.py)."""
    if n * like.element_size() <= pages.STREAMED_FROM:
        return [(0, n)]
    return _ranges(0, n, -(-step // 8) * 8)  # windows start at multiples of 8: a byte of DARE's bits each


_ZEROED = threading.local()


def _zeroed(shape: tuple[int, ...]) -> np.ndarray:
    """Zeros of `shape` (int32), in a buffer kept per thread: fresh memory faults in a page at a time, which costs
    more than counting a small tensor."""
    need = int(np.prod(shape))
    kept = getattr(_ZEROED, "buffer", None)
    if kept is None or kept.size < need:
        kept = _ZEROED.buffer = np.empty(max(need, 1 << 20), np.int32)
    out = kept[:need].reshape(shape)
    out.fill(0)
    return out


def _release(*tensors: torch.Tensor, lo: int, hi: int) -> None:
    for t in tensors:
        pages.release(t.reshape(-1)[lo:hi])


def merge(tensors: list[torch.Tensor], base: torch.Tensor, keep: list[int | None], weights: list[float],
          *, consensus: bool, normalize: bool, divisor: float, lam: float, out: torch.Tensor,
          masks: np.ndarray = NO_MASKS, factors: np.ndarray | None = None) -> torch.Tensor:
    """out = the merge (see _merge_range), each model's task vector kept whole (None) or its `keep` entries of
    largest magnitude, or, with `masks` (keep all None), the entries of its random draws times its factor."""
    cut = np.full(len(tensors), -1, np.int64)
    split = np.zeros(len(tensors), np.int64)
    n = base.numel()
    for i, k in enumerate(keep):
        if k is not None and k <= 0:
            cut[i] = BINS  # nothing kept
    ranked = [i for i, k in enumerate(keep) if k is not None and 0 < k < n]
    for i, (key, at) in zip(ranked, top_cuts(base, [tensors[i] for i in ranked], [keep[i] for i in ranked])):
        cut[i], split[i] = key, at
    return merge_pass(tensors, base, cut, split, weights, consensus=consensus, normalize=normalize, divisor=divisor,
                      lam=lam, out=out, masks=masks, factors=factors)


def merge_pass(tensors: list[torch.Tensor], base: torch.Tensor, cut: np.ndarray, split: np.ndarray,
               weights: list[float], *, consensus: bool, normalize: bool, divisor: float, lam: float,
               out: torch.Tensor, masks: np.ndarray = NO_MASKS, factors: np.ndarray | None = None) -> torch.Tensor:
    """The second pass: `out` from the inputs and each model's cut and split (see _merge_range), in windows and
    thread ranges."""
    n = base.numel()
    b, xs, o, half = bits(base), tuple(bits(x) for x in tensors), bits(out), HALVES[base.dtype]
    w = np.asarray(weights, np.float32)
    f = np.ones(len(tensors), np.float32) if factors is None else np.asarray(factors, np.float32)
    flat_out = out.reshape(-1)
    parts = _threads() if n >= SERIAL_BELOW else 1
    for lo, hi in _windows(n, parts * WINDOW, base):
        pages.ready(flat_out[lo:hi])
        _parallel(lambda a, z: _merge_range(b, xs, o, a, z, cut, split, masks, f, w, consensus, normalize,
                                            np.float32(divisor), np.float32(lam), half), _thread_ranges(lo, hi, parts))
        _release(base, *tensors, out, lo=lo, hi=hi)
    return out


# ---- DARE: the L1 rescale's sums -------------------------------------------------------------

def l1_sums(base: torch.Tensor, x: torch.Tensor, packed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ|δ|, Σ|kept δ|) of the task vector x - base and its kept entries (bits set in `packed`), as half-precision sums:
    torch's own sums of the whole magnitudes, as mergekit's are (a sum in another order could round otherwise)."""
    n = base.numel()
    magnitudes = _common.scratch(("half magnitudes",), n, base.dtype, base.device)
    b, xs, m, half = bits(base), bits(x), bits(magnitudes), HALVES[base.dtype]
    parts = _threads() if n >= SERIAL_BELOW else 1
    for lo, hi in _windows(n, parts * WINDOW, base):
        _parallel(lambda a, z: _magnitudes(b[a:z], xs[a:z], m[a:z], half), _thread_ranges(lo, hi, parts))
        _release(base, x, lo=lo, hi=hi)
    before = magnitudes.sum()
    _parallel(lambda a, z: _drop(m[a:z], packed[a >> 3:]), _thread_ranges(0, n, parts))  # a: a multiple of BLOCK
    return before, magnitudes.sum()
