"""Which input of a merge holds NaN or inf: one error naming the tensor and the checkpoint.

The executor looks only when something went wrong (a non-finite output, or a method that failed on such
values: TIES' top-k selection cannot order NaN), so the inputs of a healthy merge are never read twice.
"""

from __future__ import annotations

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


def count_non_finite(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def non_finite_input(task: TensorTask, sources: dict[int, str]) -> NonFiniteError | None:
    """The error for the first input of `task` that holds NaN/inf, as stored or once rounded to the recipe's
    `dtype`; None when every input is finite."""
    inputs = list(task.tensors) + ([task.base] if task.base is not None else [])
    inputs += [task.extra_rows] if task.extra_rows is not None else []
    for i, t in enumerate(inputs):
        where = sources.get(id(t), f"input {i + 1} of {len(inputs)}")
        x = t.load()
        stored = count_non_finite(x)
        if stored:
            return NonFiniteError(f"tensor {task.name}: {where} holds {stored} non-finite value(s) (NaN/inf); repair "
                                  "or leave out that checkpoint")
        rounded = 0
        if task.input_dtype is not None and x.is_floating_point():
            rounded = count_non_finite(x.to(task.input_dtype))
        if rounded:
            dtype = str(task.input_dtype).removeprefix("torch.")
            return NonFiniteError(f"tensor {task.name}: {rounded} value(s) of {where} overflow {dtype}, the recipe's "
                                  "dtype; use a wider dtype")
    return None
