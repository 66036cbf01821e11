"""What a plan is made of: one `TensorTask` per output tensor, grouped per component in a `ComponentPlan`."""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checkpoint import Checkpoint, Component, LazyTensor


@dataclass(kw_only=True)
class TensorTask:
    """How to produce one output tensor (built with keywords: it has many fields)."""

    name: str  # the tensor's name in the output file
    shape: tuple[int, ...]
    dtype: torch.dtype  # written dtype
    tensors: list[LazyTensor]  # inputs that are not the base (all inputs when the method ignores the base)
    base: LazyTensor | None = None
    method: Any = None  # a methods.MethodSpec; None copies tensors[0]
    params: list[dict] = field(default_factory=list)
    global_params: dict = field(default_factory=dict)
    input_dtype: torch.dtype | None = None  # inputs are rounded to this before merging (recipe `dtype`)
    seed: int | None = None  # per-tensor seed for random methods
    extra_rows: LazyTensor | None = None  # vocabulary rows only some inputs have, appended unmerged
    native_dtype: torch.dtype | None = None  # half precision the method computes in, as mergekit does
    label: str = ""  # mergekit's name for the task (its largest input tensor name), which orders its random draws
    stream: "SharedStream | None" = None  # the merge's one random stream, when the random draws follow mergekit's
    # each of `tensors`' own name where it differs from `name` (slices that renumber layers): the name its input's
    # statistics file keys the tensor by (regmean, fisher); None: all are `name`
    input_names: list[str] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def renamed(self, name: str) -> "TensorTask":
        """This task writing its tensor as `name` (a multimodal layout's prefix on the planned name); each input's
        own name gets the same new prefix, as a statistics file of an input in that layout names it."""
        own = None if self.input_names is None else [same_prefix(n, self.name, name) for n in self.input_names]
        return dataclasses.replace(self, name=name, input_names=own)


def same_prefix(other: str, planned: str, written: str) -> str:
    """`other` with the prefix that turned `planned` into `written` (they share everything after it) turned the
    same way; `written` itself when `other` lacks that prefix."""
    if other == planned:
        return written
    n = 0
    while n < min(len(written), len(planned)) and written[-1 - n] == planned[-1 - n]:
        n += 1
    old, new = planned[:len(planned) - n], written[:len(written) - n]
    return new + other[len(old):] if other.startswith(old) else written


@dataclass(kw_only=True)
class ComponentPlan:
    """One output component as planned (built with keywords)."""

    name: str
    how: str  # "merge <method>" or "copy"
    sources: list[str]  # input paths, base first when there is one
    component: Component  # the output component (config of the reference input); tensors are the tasks' outputs
    tasks: dict[str, TensorTask]  # keyed by the component's tensor name
    reference: Checkpoint  # the checkpoint whose config (and side files) the output takes
    has_base: bool = False  # sources[0] is the base model
    written: list = field(default_factory=list)  # each source's parameters as the recipe writes them
    config_updates: dict = field(default_factory=dict)  # output config keys the plan changes (layers, vocabulary)
    tokenizer: Any = None  # an engine.tokenizer.TokenizerPlan when the recipe builds the output's tokenizer


def written_dtype(inputs: list[LazyTensor], dtype: torch.dtype | None, out_dtype: torch.dtype | None) -> torch.dtype:
    first = inputs[0].dtype
    if not first.is_floating_point:
        return first
    if out_dtype or dtype:
        return out_dtype or dtype
    return promoted(inputs)


def promoted(inputs: list[LazyTensor]) -> torch.dtype:
    """The dtype that holds every input's values (torch's promotion)."""
    d = inputs[0].dtype
    for t in inputs[1:]:
        d = torch.promote_types(d, t.dtype)
    return d


def tensor_seed(seed: int | None, cname: str, name: str) -> int | None:
    if seed is None:
        return None
    return (seed * 1_000_003 + zlib.crc32(f"{cname}/{name}".encode())) % 2**63


def planned(source: Component, name: str, config: dict, tasks: dict[str, TensorTask]) -> Component:
    """The output component as planned: `source`'s architecture, with the tasks' shapes and dtypes, no data."""
    return dataclasses.replace(source, name=name, config=config,
                               tensors={n: LazyTensor(t.shape, t.dtype, lambda: None) for n, t in tasks.items()})


class SharedStream:
    """One random stream for a whole merge, seeded once and drawn from task after task in mergekit's order (by
    task label), so a seeded dare/della config gives mergekit's model (mergekit seeds torch once and runs its
    tasks in that order)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self.generators:
            self.generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[key]


HALF = (torch.bfloat16, torch.float16)


def native_dtype(inputs: list[LazyTensor], dtype: torch.dtype | None, compute_dtype: str | None) -> torch.dtype | None:
    """The half precision a merge computes in, as mergekit computes it: the recipe's `dtype`, else the inputs'
    (promoted); None for float32/float64 or when the recipe asks for `compute_dtype: float32`."""
    if compute_dtype == "float32":
        return None
    floats = [t for t in inputs if t.dtype.is_floating_point]
    d = dtype or (promoted(floats) if floats else None)
    return d if d in HALF else None
