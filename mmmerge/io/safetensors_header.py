"""A safetensors header, checked completely before any tensor is read: the rules of the safetensors library.

A header that lies (overlapping or out-of-order offsets, sizes that do not match dtype x shape, data past the
end of the file, a name given twice) would otherwise be merged without a word: two tensors read the same
bytes, or a tensor reads another's. Only the header is read; the check costs a sort of the tensor entries.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnreadableFileError
from ..terminal import printable

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets into the data, which starts at `data_start` in the file
    end: int


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _unique_keys(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"{printable(twice)} is given twice")
    return out


def _uints(values) -> bool:
    """A list of non-negative ints (bools, floats and strings are not)."""
    if type(values) is not list:
        return False
    for v in values:
        if type(v) is not int or v < 0:
            return False
    return True


def _span(e: Entry) -> tuple[int, int]:
    return e.begin, e.end


def read_header(path: Path) -> tuple[int, list[Entry]]:
    """(where the data starts in the file, the tensor entries in file order); UnreadableFileError naming the
    file and tensor when anything does not hold."""
    def bad(what: str) -> UnreadableFileError:
        return UnreadableFileError(f"{path}: not a valid safetensors file ({what})")

    def bad_tensor(name: str, what: str) -> UnreadableFileError:
        return UnreadableFileError(f"{path}: tensor {printable(name)}: {what}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError("header length runs past the end of the file" if n > size - 8 else
                                 f"header of {n} bytes, more than the {MAX_HEADER_BYTES} the format allows")
            header = json.loads(f.read(n), object_pairs_hook=_unique_keys)
    except (OSError, ValueError, struct.error) as e:
        raise UnreadableFileError(f"{path}: not a readable safetensors file ({_first_line(e)})") from e
    if not isinstance(header, dict):
        raise bad("header is not an object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise bad("__metadata__ is not a map of strings")
    data_start, data_bytes = 8 + n, size - 8 - n
    entries = []
    for name, info in header.items():
        if type(info) is not dict or len(info) != 3 or not info.keys() >= ENTRY_KEYS:
            raise bad_tensor(name, "its header entry needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        itemsize = DTYPE_BYTES.get(dtype) if type(dtype) is str else None
        if itemsize is None:
            raise bad_tensor(name, f"dtype {printable(str(dtype))} is not one mmmerge reads")
        if not _uints(shape):
            raise bad_tensor(name, "its shape is not a list of non-negative integers")
        if not _uints(offsets) or len(offsets) != 2:
            raise bad_tensor(name, "its data_offsets are not two non-negative integers")
        numel = 1
        for d in shape:
            numel *= d
        begin, end = offsets
        if end < begin or end - begin != numel * itemsize or end > data_bytes:
            raise bad_tensor(name, f"its data offsets do not fit its shape or the file ([{begin}, {end}] for "
                                   f"{dtype} x {tuple(shape)}, {data_bytes} bytes of data in the file)")
        entries.append(Entry(name, dtype, tuple(shape), begin, end))
    position, previous = 0, None
    for e in sorted(entries, key=_span):
        if e.begin < position:
            raise bad_tensor(e.name, f"its data overlaps tensor {printable(previous)}'s")
        if e.begin > position:
            raise bad_tensor(e.name, f"its data offsets leave a gap of {e.begin - position} bytes before it")
        position, previous = e.end, e.name
    if position != data_bytes:
        raise bad(f"{data_bytes - position} bytes after the last tensor's data")
    return data_start, entries
