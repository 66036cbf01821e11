"""Streaming sharded safetensors writer.

Every header is computed from shapes and dtypes before any data is read, so each shard is written in
one pass holding a single tensor in memory at a time. Output goes through `atomic_output_dir`.
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..checkpoint import LazyTensor
from ..errors import ShapeMismatchError
from .reader import SAFETENSORS_DTYPES

DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
DEFAULT_SHARD_BYTES = 5 * 1024**3
ONE_FILE = 2**62  # max_shard_bytes that never shards: for readers of one file only (open_clip, timm, peft)


def plan_shards(tensors: Mapping[str, LazyTensor], max_shard_bytes: int) -> list[list[str]]:
    """Group tensor names, in order, into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += t.nbytes
    return [s for s in shards if s] or [[]]


def _header(names: list[str], tensors: Mapping[str, LazyTensor], metadata: dict | None) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _tensor_bytes(name: str, t: LazyTensor, value: torch.Tensor) -> memoryview:
    if tuple(value.shape) != t.shape:
        raise ShapeMismatchError(f"tensor {name}: produced shape {tuple(value.shape)}, planned {t.shape}")
    value = value.detach().to(device="cpu", dtype=t.dtype).contiguous()
    return memoryview(value.reshape(-1).view(torch.uint8).numpy())


def write_shard(path: Path, names: list[str], tensors: Mapping[str, LazyTensor], metadata: dict | None = None,
                on_tensor: Callable[[str, int], None] | None = None) -> None:
    """Write one safetensors file. Each tensor is written by a second thread while the next one is computed:
    writing is the kernel's work and can stall on the disk, so it need not hold up the computation. One
    write is in flight at a time, in order, which costs one tensor of memory."""
    with open(path, "wb") as f, ThreadPoolExecutor(1) as writer:
        f.write(_header(names, tensors, metadata))
        in_flight = None
        for name in names:
            t = tensors[name]
            data = _tensor_bytes(name, t, t.load())
            if in_flight is not None:
                _finish(*in_flight, on_tensor)
            in_flight = (writer.submit(f.write, data), name, t.nbytes)
        if in_flight is not None:
            _finish(*in_flight, on_tensor)


def _finish(write: Future, name: str, nbytes: int, on_tensor: Callable[[str, int], None] | None) -> None:
    write.result()  # raises the write's error, if any, here
    if on_tensor:
        on_tensor(name, nbytes)


def shard_layout(tensors: Mapping[str, LazyTensor], max_shard_bytes: int,
                 prefix: str = "model") -> dict[str, list[str]]:
    """Each file `write_safetensors` writes for `tensors`, with the tensor names it holds, in order: one
    `prefix.safetensors`, or numbered shards (the index is not in it)."""
    shards = plan_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        return {f"{prefix}.safetensors": shards[0]}
    return {f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors": names for i, names in enumerate(shards)}


def write_index(folder: Path, layout: dict[str, list[str]], tensors: Mapping[str, LazyTensor],
                prefix: str = "model") -> list[str]:
    """Write `prefix.safetensors.index.json` for a sharded `layout` (nothing for one file); returns its name."""
    if len(layout) == 1:
        return []
    weight_map = {n: file for file, names in layout.items() for n in names}
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (Path(folder) / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return [f"{prefix}.safetensors.index.json"]


def shard_metadata(metadata: dict | None) -> dict:
    """The `__metadata__` every shard's header carries."""
    return {"format": "pt", **(metadata or {})}


def write_safetensors(folder: Path, tensors: Mapping[str, LazyTensor], *, prefix: str = "model",
                      max_shard_bytes: int = DEFAULT_SHARD_BYTES, metadata: dict | None = None,
                      on_tensor: Callable[[str, int], None] | None = None) -> list[str]:
    """Write `tensors` into `folder` as `prefix.safetensors`, or as shards plus `prefix.safetensors.index.json`.

    Returns the file names written. `on_tensor(name, nbytes)` is called after each tensor (progress).
    """
    folder = Path(folder)
    layout = shard_layout(tensors, max_shard_bytes, prefix)
    for file, names in layout.items():
        write_shard(folder / file, names, tensors, shard_metadata(metadata), on_tensor)
    return list(layout) + write_index(folder, layout, tensors, prefix)
