"""Which input of a merge holds NaN or inf: one error naming the tensor and the checkpoint; and the one exception,
an inf that every input holds at the same place (gemma4's clipped linears keep +-inf bounds unless a checkpoint
sets them), which the output keeps.

The executor looks only when something went wrong (a non-finite output, or a method that failed on such
values: TIES' top-k selection cannot order NaN), so the inputs of a healthy merge are never read twice.

Agreed infs are taken out of the merge (zero in every input: where the models agree, a task vector is zero and a
norm gets nothing from them) and put back in the output, whatever the method computes there: linear would give
that inf too (as mergekit does), task arithmetic and TIES would give inf - inf = NaN (mergekit writes NaN there).
NaN never counts as agreed: it holds no value to keep, compares unequal to itself, and marks a broken checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import NonFiniteError
from .plan import Plan, TensorTask


def input_sources(plan: Plan) -> dict[int, str]:
    """The checkpoint path of every input tensor of the plan's tasks, by the identity of its LazyTensor."""
    sources: dict[int, str] = {}
    for cp in plan.components.values():
        for task in cp.tasks.values():
            offset = 1 if cp.has_base else 0
            for i, t in enumerate(task.tensors):
                if offset + i < len(cp.sources):
                    sources[id(t)] = cp.sources[offset + i]
            if task.base is not None and cp.has_base:
                sources[id(task.base)] = cp.sources[0]
    return sources


@dataclass(frozen=True)
class AgreedInf:
    """The places where every input of a task holds the same inf (`mask`, over the merged rows) and those infs."""

    mask: torch.Tensor
    values: torch.Tensor  # the infs, in the order of mask's True entries

    def take_out(self, x: torch.Tensor) -> torch.Tensor:
        """An input with zero at the agreed places."""
        return x.masked_fill(self.mask.to(x.device), 0)

    def put_back(self, result: torch.Tensor) -> None:
        """Write the agreed infs into the merged rows of `result` (in place; rows appended after them stay)."""
        merged = result if result.shape == self.mask.shape else result.narrow(0, 0, self.mask.shape[0])
        merged[self.mask.to(result.device)] = self.values.to(result.device, result.dtype)


def agreed_inf(task: TensorTask) -> AgreedInf | None:
    """The infs every merged input of `task` (its models and base, as stored) holds at the same places; None where
    there are none."""
    inputs = [t.load() for t in [*task.tensors, *([task.base] if task.base is not None else [])]]
    if not inputs or not all(x.is_floating_point() for x in inputs):
        return None
    first = inputs[0]
    mask = torch.isinf(first)
    for x in inputs[1:]:
        mask &= x == first
    return AgreedInf(mask, first[mask]) if bool(mask.any()) else None


def count_non_finite(t: torch.Tensor, agreed: AgreedInf | None = None) -> int:
    """NaN/inf entries of `t`, but for the agreed ones."""
    if not t.is_floating_point():
        return 0
    bad = ~torch.isfinite(t)
    if agreed is not None:
        bad &= ~agreed.mask.to(t.device)
    return int(bad.sum())


def non_finite_input(task: TensorTask, sources: dict[int, str],
                     agreed: AgreedInf | None = None) -> NonFiniteError | None:
    """The error for the first input of `task` that holds NaN/inf (but for `agreed` infs), as stored or once
    rounded to the recipe's `dtype`; None when every input is finite."""
    inputs = list(task.tensors) + ([task.base] if task.base is not None else [])
    inputs += [task.extra_rows] if task.extra_rows is not None else []
    for i, t in enumerate(inputs):
        where = sources.get(id(t), f"input {i + 1} of {len(inputs)}")
        x = t.load()
        agreed_here = agreed if t is not task.extra_rows else None  # appended rows: none agreed
        stored = count_non_finite(x, agreed_here)
        if stored:
            return NonFiniteError(f"tensor {task.name}: {where} holds {stored} non-finite value(s) (NaN/inf); repair "
                                  "or leave out that checkpoint")
        rounded = 0
        if task.input_dtype is not None and x.is_floating_point():
            rounded = count_non_finite(x.to(task.input_dtype), agreed_here)
        if rounded:
            dtype = str(task.input_dtype).removeprefix("torch.")
            return NonFiniteError(f"tensor {task.name}: {rounded} value(s) of {where} overflow {dtype}, the recipe's "
                                  "dtype; use a wider dtype")
    return None
