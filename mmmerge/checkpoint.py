"""The common namespace: a checkpoint is a set of components whose tensors are read only on demand.

A `LazyTensor` knows its shape and dtype up front (from a file header) so plans and output headers can
be built before any tensor data is read; `load()` reads just that tensor. Adapters derive new lazy
tensors from source ones (`derive`) to split fused weights, transpose or reshape without reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import MMMergeError

COMPONENTS = ("vision", "projector", "language")


@dataclass(frozen=True)
class LazyTensor:
    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]
    # writes the values into a given tensor of this shape and dtype (an output file's own pages) where computing
    # in place saves a whole-tensor buffer; None: the writer copies `load()`'s result
    fill: Callable[[torch.Tensor], None] | None = None

    def __repr__(self) -> str:  # the read handle says nothing to a person
        return f"LazyTensor(shape={tuple(self.shape)}, dtype={str(self.dtype).removeprefix('torch.')})"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def derive(self, fn: Callable[[torch.Tensor], torch.Tensor], shape) -> "LazyTensor":
        """A lazy tensor computed from this one by `fn`; `shape` is the result's shape."""
        return LazyTensor(tuple(shape), self.dtype, lambda: fn(self.load()))

    @staticmethod
    def of(tensor: torch.Tensor) -> "LazyTensor":
        """Wrap an in-memory tensor (tests, small derived tensors)."""
        return LazyTensor(tuple(tensor.shape), tensor.dtype, lambda: tensor)


def combine(parts: list[LazyTensor], fn: Callable[..., torch.Tensor], shape) -> LazyTensor:
    """A lazy tensor computed from several (e.g. q, k, v -> one fused in_proj)."""
    return LazyTensor(tuple(shape), parts[0].dtype, lambda: fn(*[p.load() for p in parts]))


def concat(parts: list[LazyTensor], dim: int = 0) -> LazyTensor:
    shape = list(parts[0].shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    return combine(parts, lambda *ts: torch.cat(ts, dim=dim), shape)


def chunk(t: LazyTensor, n: int, dim: int = 0) -> list[LazyTensor]:
    """Split a fused tensor into `n` equal lazy parts along `dim`."""
    size = t.shape[dim] // n
    shape = list(t.shape)
    shape[dim] = size
    return [t.derive(lambda x, i=i: x.narrow(dim, i * size, size).clone(), shape) for i in range(n)]


@dataclass
class Component:
    """One part of a (multimodal) model in the namespace of a transformers architecture.

    `arch` is the transformers class whose state dict these names belong to (e.g. `CLIPVisionModel`),
    `config` that class's config as a dict (with `model_type`), `preprocess` the image preprocessing of a
    vision encoder (size, crop_size, mean, std, interpolation, resize_mode). `extra` lists tensors that
    travel with the component but that `arch` does not hold (e.g. an open_clip projection head).
    `placeholders` lists tensors `arch` needs but the source lacks, made up so that it loads with no missing
    keys (e.g. DINOv2's unused mask token from a timm checkpoint); writing back to the source drops them.
    """

    name: str
    arch: str
    config: dict
    tensors: dict[str, LazyTensor]
    preprocess: dict | None = None
    extra: tuple[str, ...] = ()
    placeholders: tuple[str, ...] = ()  # made up for keys the source lacks; see above

    @property
    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def dtypes(self) -> dict[str, int]:
        """Parameter count per dtype name."""
        out: dict[str, int] = {}
        for t in self.tensors.values():
            key = str(t.dtype).removeprefix("torch.")
            out[key] = out.get(key, 0) + t.numel
        return out

    def __repr__(self) -> str:
        """One line (`print(component)` in a notebook): what it is and how big, not every tensor's read handle."""
        dtypes = ", ".join(self.dtypes())
        return (f"Component({self.name!r}, arch={self.arch!r}, {len(self.tensors)} tensors, "
                f"{self.num_params:,} parameters, {dtypes or 'no tensors'})")


@dataclass
class Checkpoint:
    """What an adapter read: the source format, its components, and anything it deliberately left out."""

    path: Path
    format: str
    components: dict[str, Component]
    # tensor name (or name prefix) -> why no component holds it
    outside_reasons: Mapping[str, str] = field(default_factory=dict)
    # the tensors no component holds (text tower, task heads, logit scale), kept as they are for `write_source`
    outside: dict[str, LazyTensor] = field(default_factory=dict)
    source_config: dict = field(default_factory=dict)  # the source's own config files, for `write_source`
    family: Any = None  # the multimodal family row (adapters.families.Family) of a whole MLLM, else None
    side_files: Path | None = None  # a transformers folder whose tokenizer, processor, ... travel with it
    whole: str | None = None  # why the model has no components and merges whole (adapters/hf_whole.py), else None

    def __repr__(self) -> str:
        """One line: the path, the format and each component's architecture."""
        parts = ", ".join(f"{n}={c.arch}" for n, c in self.components.items())
        return f"Checkpoint({str(self.path)!r}, format={self.format!r}, {parts or 'no components'})"

    def component(self, name: str) -> Component:
        if name not in self.components and self.whole is not None:
            raise MMMergeError(f"{self.path}: a whole model with no {name} component ({self.whole}); it merges "
                               f"only whole, with `models:`, beside whole models of the same architecture")
        if name not in self.components:
            have = ", ".join(self.components) or "none"
            raise MMMergeError(f"{self.path}: has no {name} component (it has: {have})")
        return self.components[name]
