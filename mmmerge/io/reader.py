"""Lazy readers: every tensor of a file or folder as a `LazyTensor`, without reading tensor data.

safetensors files are read one tensor at a time from their header's offsets; `.bin`/`.pt` files go through
`torch.load(weights_only=True, mmap=True)` only, so a pickle that would run code is refused.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import pickle
import warnings
from pathlib import Path

import torch

from ..checkpoint import LazyTensor
from ..errors import MMMergeError, UnreadableFileError, UnsafeCheckpointError
from ..terminal import printable
from . import pages
from .safetensors_header import read_header

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Weight files a model folder may hold, in the order they are preferred.
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def read_safetensors(path: Path) -> dict[str, LazyTensor]:
    """Tensors of a safetensors file, from its header alone, checked completely (safetensors_header.py).

    Each tensor's data is mapped when it is loaded (see `_read_range`).
    """
    data_start, entries = read_header(path)
    out = {}
    for e in entries:
        dtype = SAFETENSORS_DTYPES[e.dtype]
        out[e.name] = LazyTensor(e.shape, dtype, functools.partial(_read_range, path, data_start + e.begin,
                                                                   e.end - e.begin, dtype, e.shape))
    return out


def _read_range(path: Path, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    """One tensor's bytes, mapped from the file: no copy and no zero-filled pages (3x faster than a read).

    Each tensor gets its own private mapping, released with the tensor, so its pages leave the process when
    it is freed and peak memory stays a few tensors, not the touched part of the file; writes to the tensor
    would stay in the process (copy-on-write), but nothing writes to an input: a tensor over
    `pages.STREAMED_FROM` bytes has its pages let go a slice at a time as a merge passes over it. Where a file
    cannot be mapped (some file systems, or the process's limit on mappings) the bytes are read instead."""
    if not nbytes:
        return torch.empty(shape, dtype=dtype)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset + nbytes:
                raise UnreadableFileError(f"{path}: truncated: a tensor's data ends past the end of the file")
            try:
                mapped = mmap.mmap(f.fileno(), offset + nbytes - start, access=mmap.ACCESS_COPY, offset=start)
            except (OSError, ValueError):
                data = torch.empty(nbytes, dtype=torch.uint8)
                f.seek(offset)
                if f.readinto(memoryview(data.numpy())) != nbytes:
                    raise UnreadableFileError(f"{path}: truncated: a tensor's data ends past the end of the file")
                return data.view(dtype).reshape(shape)
    except OSError as e:
        raise UnreadableFileError(f"{path}: cannot read tensor data ({first_line(e)})") from e
    data = torch.frombuffer(mapped, dtype=torch.uint8, count=nbytes, offset=offset - start)
    if nbytes > pages.STREAMED_FROM:  # nothing writes to an input: its pages can be let go as a merge passes
        pages.track(mapped, data.data_ptr() - (offset - start), shared=False)
    return data.view(dtype).reshape(shape)


def read_pickle(path: Path) -> dict[str, LazyTensor]:
    """Tensors of a PyTorch checkpoint, loaded with weights_only=True (and mmap when the format allows)."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the outcome is reported below
            warnings.simplefilter("ignore")
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a forbidden object, or bytes the weights-only unpickler does not take
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle: not a plain checkpoint of tensors ({unpickler_reason(e)}); a pickle of "
            "other objects could run code, so convert it to safetensors with a tool you trust"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # torch's unpickler meets corrupt bytes with any built-in error (IndexError, KeyError ...)
        raise UnreadableFileError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                                  f"{first_line(e)})") from e
    obj = _unwrap_state_dict(obj)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnreadableFileError(f"{path}: holds no flat dictionary of tensors")
    return {k: LazyTensor.of(v) for k, v in obj.items()}


def unpickler_reason(e: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that says what it met (a forbidden GLOBAL, an unknown operand),
    without the paragraphs around it."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful or lines or [type(e).__name__])[0]


def _unwrap_state_dict(obj):
    """Training checkpoints nest the weights under `state_dict` or `model`, sometimes with `module.`."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_file(path: Path) -> dict[str, LazyTensor]:
    path = Path(path)
    if not path.is_file():
        what = "not a regular file (a folder, device, pipe or socket)" if path.exists() else "no such file"
        raise UnreadableFileError(f"{path}: {what}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return read_pickle(path)
    raise UnreadableFileError(f"{path}: unknown weight file type (expected .safetensors, .bin, .pt or .pth)")


def read_index(index_path: Path) -> dict[str, LazyTensor]:
    """A sharded checkpoint: `*.index.json` with a `weight_map` from tensor name to shard file."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UnreadableFileError(f"{index_path}: not a valid shard index ({first_line(e)})") from e
    check_weight_map(index_path, weight_map)
    out: dict[str, LazyTensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors = read_file(index_path.parent / shard)
        for name, t in tensors.items():
            if weight_map.get(name) == shard:
                out[name] = t
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise UnreadableFileError(f"{index_path}: tensor {missing[0]} is listed but not in its shard")
    return out


def check_weight_map(index_path: Path, weight_map) -> None:
    """A shard index maps tensor names (strings) to file names (strings) in the index's own folder: a path
    elsewhere (`../other/model.safetensors`, `/etc/...`) would make one checkpoint read another's files."""
    if not isinstance(weight_map, dict):
        raise UnreadableFileError(f"{index_path}: not a valid shard index (weight_map is not an object)")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise UnreadableFileError(f"{index_path}: tensor {printable(name)}: its shard is {type(shard).__name__} "
                                      f"{printable(repr(shard))[:40]}, not a file name")
        if shard in ("", ".", "..") or "/" in shard or "\\" in shard or Path(shard).name != shard:
            raise UnreadableFileError(f"{index_path}: tensor {printable(name)}: shard {printable(shard)} is not a "
                                      "file in the index's own folder")


def read_folder(folder: Path, names: tuple[str, ...] = FOLDER_WEIGHTS) -> dict[str, LazyTensor]:
    """The weights of a model folder: a sharded index or a single file, safetensors first."""
    folder = Path(folder)
    for name in names:
        index = folder / f"{name}.index.json"
        if index.is_file():
            return read_index(index)
        if (folder / name).exists():  # read_file refuses a folder or device of that name, naming it
            return read_file(folder / name)
    raise UnreadableFileError(f"{folder}: no weights found (looked for {', '.join(names)} and their shard indexes)")


def read_tensors(path: Path) -> dict[str, LazyTensor]:
    """Tensors of a weight file, a shard index, or a model folder."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path)
    if path.name.endswith(".index.json"):
        return read_index(path)
    return read_file(path)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UnreadableFileError(f"{path}: not valid JSON ({first_line(e)})") from e
    if not isinstance(data, dict):
        raise UnreadableFileError(f"{path}: expected a JSON object")
    return data


def read_jsonl(path: Path, error: type[MMMergeError] = UnreadableFileError) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file; a line that is not a JSON object
    raises `error` naming the file and the line."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise error(f"{path}: line {n}: not valid JSON ({first_line(e)})") from e
        if not isinstance(row, dict):
            raise error(f"{path}: line {n}: expected a JSON object")
        rows.append((n, row))
    return rows


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
