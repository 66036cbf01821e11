"""torch.bernoulli's draws on the CPU, computed by compiled code straight into bits, several times faster.

DARE keeps each entry of a task vector with probability `density`, one `torch.bernoulli` draw per entry from the
merge's generator (mergekit's stream: a seeded merge must give mergekit's bits). torch draws them one at a time
through a lock at about 13 ns each, which made a bf16 dare_ties merge slower than mergekit's. Its CPU generator is
an MT19937 whose state `get_state` exposes: a draw takes the next 32-bit output, keeps its low 24 bits as a
float32 in [0, 1) and compares it with p (ATen's bernoulli_distribution<float>). Here the same outputs are computed
from that state, compared with p as integers, packed 8 to a byte as np.packbits packs them, and the advanced state
is written back, so the generator goes on exactly as if torch had drawn.

That description is checked against torch itself, once per process (`replicates`): a few thousand draws and the
state after them, from a copy of a generator, must equal torch.bernoulli's; otherwise (another torch, another
layout) the caller draws with torch as before.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from numba import njit

N, M = 624, 397  # MT19937's state words, and its shift
LEFT, NEXT, WORDS = 8, 16, 24  # byte offsets in torch's CPU generator state: int32 left, uint64 next, uint64 state[N]
LOW_BITS = 24  # a float32 draw keeps this many low bits of an output
DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # probabilities drawn as float32 (float64 draws 53 bits)


@njit(nogil=True, cache=True)
def _twist(state):
    """MT19937's next block of N words, in place (three loops, as ATen's next_state: no index wraps around)."""
    upper, lower, a, one = np.uint32(0x80000000), np.uint32(0x7FFFFFFF), np.uint32(0x9908B0DF), np.uint32(1)
    for i in range(N - M):
        y = (state[i] & upper) | (state[i + 1] & lower)
        state[i] = state[i + M] ^ (y >> one) ^ (a * (y & one))
    for i in range(N - M, N - 1):
        y = (state[i] & upper) | (state[i + 1] & lower)
        state[i] = state[i + M - N] ^ (y >> one) ^ (a * (y & one))
    y = (state[N - 1] & upper) | (state[0] & lower)
    state[N - 1] = state[M - 1] ^ (y >> one) ^ (a * (y & one))


@njit(nogil=True, cache=True)
def _draw(state, left, following, count, threshold, packed):
    """`count` draws from the state (`left`, `following`: torch's `left_` and `next_`), entry e kept (its bit set in
    `packed`, np.packbits' order, the last byte's unused bits clear) when the output's low 24 bits are below
    `threshold`. Returns the new (left, following)."""
    mask = np.uint32((1 << LOW_BITS) - 1)
    byte = np.uint8(0)
    for e in range(count):
        left -= 1
        if left == 0:
            _twist(state)
            left, following = N, 0
        y = state[following]
        following += 1
        y ^= y >> np.uint32(11)
        y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
        y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
        y ^= y >> np.uint32(18)
        byte = (byte << np.uint8(1)) | np.uint8((y & mask) < threshold)
        if e & 7 == 7:
            packed[e >> 3] = byte
            byte = np.uint8(0)
    if count & 7:
        packed[count >> 3] = byte << np.uint8(8 - (count & 7))
    return left, following


def _threshold(p: float, dtype: torch.dtype) -> int:
    """The integer t with low24 < t exactly when low24 · 2⁻²⁴ < p, p as `dtype` holds it (then as a float32)."""
    held = float(torch.tensor(p, dtype=dtype).float())
    return int(np.ceil(held * (1 << LOW_BITS)))


def draw_bits(generator: torch.Generator, n: int, p: float, dtype: torch.dtype, packed: np.ndarray) -> None:
    """torch.bernoulli of n entries of probability p (held in `dtype`, a float type below float64) from `generator`,
    as bits into packed[: (n + 7) // 8]; the generator advanced past them."""
    raw = generator.get_state()
    state_bytes = raw.numpy()
    left = int(state_bytes[LEFT:LEFT + 4].view(np.int32)[0])
    following = int(state_bytes[NEXT:NEXT + 8].view(np.uint64)[0])
    state = state_bytes[WORDS:WORDS + 8 * N].view(np.uint64).astype(np.uint32)
    left, following = _draw(state, left, following, n, _threshold(p, dtype), packed)
    state_bytes[LEFT:LEFT + 4].view(np.int32)[0] = left
    state_bytes[NEXT:NEXT + 8].view(np.uint64)[0] = following
    state_bytes[WORDS:WORDS + 8 * N].view(np.uint64)[:] = state
    generator.set_state(raw)


@functools.cache
def replicates() -> bool:
    """Whether draw_bits gives torch.bernoulli's draws and leaves the generator where torch leaves it, asked of
    torch: across two of the generator's state blocks, for a seeded generator and one that has drawn before."""
    for seed, skip in ((0, 0), (12345, 1000)):
        for p, dtype in ((0.5, torch.bfloat16), (0.1, torch.float32), (0.9, torch.float16)):
            ours = torch.Generator().manual_seed(seed)
            torch.rand(skip, generator=ours)
            theirs = torch.Generator()
            theirs.set_state(ours.get_state())
            n = 2 * N + 11
            expected = torch.bernoulli(torch.full((n,), p, dtype=dtype), generator=theirs)
            packed = np.zeros((n + 7) // 8, np.uint8)
            try:
                draw_bits(ours, n, p, dtype, packed)
            except (RuntimeError, ValueError, IndexError):
                return False
            if not np.array_equal(packed, np.packbits(expected.float().numpy() != 0)):
                return False
            if not torch.equal(ours.get_state(), theirs.get_state()):
                return False
    return True
