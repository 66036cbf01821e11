"""Streaming sharded safetensors writer.

Every header is computed from shapes and dtypes before any data is read, so each shard's space is reserved and
each tensor computed straight into its place in the file. Output goes through `atomic_output_dir`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..checkpoint import LazyTensor
from ..errors import ShapeMismatchError
from . import pages
from .reader import SAFETENSORS_DTYPES

DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
DEFAULT_SHARD_BYTES = 5 * 1024**3
MAPPED_FROM = pages.STREAMED_FROM  # bytes: a larger output tensor is computed in place, in the file's mapped pages
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


def _checked(name: str, t: LazyTensor, value: torch.Tensor) -> torch.Tensor:
    if tuple(value.shape) != t.shape:
        raise ShapeMismatchError(f"tensor {name}: produced shape {tuple(value.shape)}, planned {t.shape}")
    return value.detach()


def write_shard(path: Path, names: list[str], tensors: Mapping[str, LazyTensor], metadata: dict | None = None,
                on_tensor: Callable[[str, int], None] | None = None) -> None:
    """Write one safetensors file. Its space is reserved first (a full disk fails here, before any tensor is
    computed). A tensor over `MAPPED_FROM` bytes is computed straight into the file's own pages, mapped for it
    alone, so no output tensor larger than that is ever held in anonymous memory; smaller ones are written by a
    second thread while the next is computed (writing through the page cache is cheaper than filling mapped
    pages, which the file system must make writable one by one). One write is in flight at a time, in order.
    Those computed in place are computed into one of two buffers, reused from tensor to tensor: fresh memory
    costs a page fault per page at its first write, more than a linear merge's arithmetic."""
    header = _header(names, tensors, metadata)
    total = len(header) + sum(tensors[n].nbytes for n in names)
    with open(path, "w+b") as f, ThreadPoolExecutor(1) as writer:
        f.write(header)
        f.flush()
        mapped = _reserve(f, total)
        small = [tensors[n].nbytes for n in names if not (mapped and tensors[n].nbytes > MAPPED_FROM)]
        buffers = _Alternating(max(small, default=0))
        offset, in_flight = len(header), None
        for name in names:
            t = tensors[name]
            if mapped and t.nbytes > MAPPED_FROM:
                in_flight = _finish(in_flight, on_tensor)
                with _mapping(f, offset, t) as view:
                    if t.fill is not None:
                        t.fill(view)
                    else:
                        pages.copy(view, _checked(name, t, t.load()))
                f.seek(offset + t.nbytes)
                if on_tensor:
                    on_tensor(name, t.nbytes)
            else:
                if t.fill is not None:  # not the buffer of the write in flight: that one was filled before it
                    value = buffers.next(t)
                    t.fill(value)
                else:
                    value = _checked(name, t, t.load()).to(device="cpu", dtype=t.dtype).contiguous()
                data = memoryview(value.reshape(-1).view(torch.uint8).numpy())
                in_flight = _finish(in_flight, on_tensor)
                in_flight = (writer.submit(f.write, data), name, t.nbytes)
            offset += t.nbytes
        _finish(in_flight, on_tensor)


class _Alternating:
    """Two byte buffers of `size` bytes, handed out in turn as a tensor's dtype and shape, allocated at first use."""

    def __init__(self, size: int):
        self.size, self.buffers, self.turn = size, [], 1

    def next(self, t: LazyTensor) -> torch.Tensor:
        self.turn = 1 - self.turn
        if len(self.buffers) <= self.turn:
            self.buffers.append(torch.empty(self.size, dtype=torch.uint8))
        return self.buffers[self.turn][:t.nbytes].view(t.dtype).view(t.shape)


def _finish(in_flight, on_tensor):
    """Wait for the write in flight, if any (raising its error here); None."""
    if in_flight is not None:
        write, name, nbytes = in_flight
        write.result()
        if on_tensor:
            on_tensor(name, nbytes)
    return None


def _reserve(f, size: int) -> bool:
    """Allocate the file's blocks up front (ENOSPC now, not a SIGBUS when a mapped page is written)."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return False
        raise
    return True


@contextlib.contextmanager
def _mapping(f, offset: int, t: LazyTensor):
    """The tensor's bytes in the file as a writable tensor of its dtype and shape, unmapped on leaving (its pages
    then belong to the page cache alone). Whoever fills it makes its pages writable and lets them go a slice at
    a time (io/pages.py), so the process never holds all of them."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    region = mmap.mmap(f.fileno(), offset + t.nbytes - start, access=mmap.ACCESS_WRITE, offset=start)
    view = torch.frombuffer(region, dtype=torch.uint8, count=t.nbytes, offset=offset - start)
    pages.track(region, view.data_ptr() - (offset - start), shared=True)
    try:
        yield view.view(t.dtype).view(t.shape)
    finally:
        pages.untrack(region)
        del view
        region.close()


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
