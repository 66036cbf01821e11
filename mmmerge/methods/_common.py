"""Helpers shared by the method families: task vectors, sparsification, sign consensus, parameter kinds.

The task-vector methods' sparsifiers are in task_arithmetic.py, their selections in _selection.py.
"""

from __future__ import annotations

import threading

import torch

from ..errors import RecipeError
from ._registry import Param

# Parameter kinds used by several methods.
WEIGHT = Param(float, help="scale of this model's contribution")
DENSITY = Param(float, 1.0, low=0.0, high=1.0, low_open=True, help="fraction of entries kept")
INT8_MASK = Param(bool, False, help="accepted for mergekit compatibility; changes nothing (masks are not stored)")


CHUNK = 1 << 18  # entries merged at a time by the slice-wise methods: 1 MiB per float32 buffer, cache-sized


_SCRATCH = threading.local()


def scratch(key: object, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat buffer of `numel` entries kept for `key` from one merged tensor to the next (per thread): the slice-wise
    methods' temporaries are a few MiB per tensor, and fresh memory costs a page fault per page at its first
    write (about as much as a task-vector merge's arithmetic on it). Valid until the next call for the same key."""
    kept = getattr(_SCRATCH, "buffers", None)
    if kept is None:
        kept = _SCRATCH.buffers = {}
    where = (key, dtype, torch.device(device))
    buffer = kept.get(where)
    if buffer is None or buffer.numel() < numel:
        buffer = kept[where] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel]


def release_scratch() -> None:
    """Let go of this thread's kept buffers (a merge that is done: DARE's whole-tensor magnitudes are 0.5 GiB at 1B)."""
    getattr(_SCRATCH, "buffers", {}).clear()


def widened(x: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """`x` in the buffer's dtype: itself, or copied into the buffer's first entries (a copy, then same-dtype
    arithmetic, is 2x faster than arithmetic on mixed dtypes)."""
    return x if x.dtype == buffer.dtype else buffer[:x.numel()].copy_(x)


def task_vectors(tensors: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """Stack of differences to the base, shape [n_models, *base.shape]."""
    return torch.stack([t - base for t in tensors])


def check_della_epsilon(params: list[dict], global_params: dict) -> None:
    for i, p in enumerate(params):
        d, e = p["density"], p["epsilon"]
        if d < 1 and not (0 < d - e and d + e < 1):
            raise RecipeError(
                f"DELLA pruning: parameter `epsilon` ({e:g}) must keep density ± epsilon inside (0, 1) for model {i} (density {d:g})"
            )


def sign_consensus(deltas: torch.Tensor) -> torch.Tensor:
    """TIES sign election over dim 0: True where an entry's sign equals the sign of the sum (0 counts as +).

    Zero entries never agree.
    """
    elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    return deltas.sign() == elected
