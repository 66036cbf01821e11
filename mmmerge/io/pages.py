"""A large tensor's file pages held by the process a slice at a time, so resident memory stays flat with the model.

A merge maps each input tensor from its file (reader.py) and computes a large output tensor straight into the
output file's pages (writer.py). Mapped pages count in the process's resident memory until they are unmapped: at a
1B model's shapes, its 0.5 GiB embedding in four inputs and the output put 2.5 GiB of file pages in the process
at once. The slice-wise methods, passing over such tensors a slice at a time, `release` each slice's pages once
done with them (the kernel keeps them in the page cache: a later pass maps them again from there) and make an
output slice's pages writable just before they fill it (`ready`: one call instead of a fault per page).

Only mappings registered here with `track` are touched: a private mapping of a file that nothing writes to
(releasing it loses nothing) and a shared mapping of the output file (its written pages stay in the page cache,
dirty, until written back). Other memory, such as a tensor the process computed, is never released.
"""

from __future__ import annotations

import mmap
import weakref

import torch

MADV_POPULATE_WRITE = 23  # Linux's number; Python's mmap module does not name it
STREAMED_FROM = 64 << 20  # bytes: a larger tensor's pages are held a slice at a time
SLICE = 8 << 20  # bytes copied at a time by `copy`

_TRACKED: dict[int, tuple[int, int, weakref.ref, bool]] = {}  # id(mapping) -> (address, length, mapping, shared)


def track(mapping: mmap.mmap, address: int, *, shared: bool) -> None:
    """Register a mapping at `address` whose pages `release` may drop (`shared`: the output file's, which `ready`
    also makes writable). Unregistered when the mapping is freed or `untrack`ed."""
    key = id(mapping)
    _TRACKED[key] = (address, len(mapping), weakref.ref(mapping, lambda _: _TRACKED.pop(key, None)), shared)


def untrack(mapping: mmap.mmap) -> None:
    _TRACKED.pop(id(mapping), None)


def _pages(t: torch.Tensor, *, outward: bool):
    """(mapping, first byte, length) of the whole pages of a tracked mapping that `t`'s bytes cover (`outward`:
    also the pages it covers in part), or None."""
    if not _TRACKED or not t.is_contiguous() or t.device.type != "cpu":
        return None
    begin = t.data_ptr()
    end = begin + t.numel() * t.element_size()
    for address, length, ref, shared in _TRACKED.values():
        if address <= begin and end <= address + length:
            mapping = ref()
            if mapping is None or mapping.closed:
                return None
            page = mmap.PAGESIZE
            lo, hi = begin - address, end - address
            lo, hi = (lo // page * page, -(-hi // page) * page) if outward else (-(-lo // page) * page, hi // page * page)
            return (mapping, lo, min(hi, length) - lo, shared) if hi > lo else None
    return None


def release(t: torch.Tensor) -> None:
    """Drop the pages wholly inside `t`'s bytes from the process, where `t` lies in a tracked mapping."""
    found = _pages(t, outward=False)
    if found is not None:
        mapping, start, length, _ = found
        mapping.madvise(mmap.MADV_DONTNEED, start, length)


def ready(t: torch.Tensor) -> None:
    """Make the pages of `t`'s bytes writable in one call, where `t` lies in a tracked shared mapping (a fault at
    the first write to each page is 3-5x slower)."""
    found = _pages(t, outward=True)
    if found is not None and found[3]:
        mapping, start, length, _ = found
        try:
            mapping.madvise(MADV_POPULATE_WRITE, start, length)
        except OSError:  # Linux before 5.14: the pages fault in as they are written
            pass


def copy(out: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """out.copy_(value), a slice at a time where `out` lies in a tracked mapping (its pages held one slice at a
    time); `out` and `value` contiguous and of one shape."""
    if _pages(out, outward=True) is None:
        return out.copy_(value)
    flat, source = out.view(-1), value.reshape(-1)
    step = max(1, SLICE // out.element_size())
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step]
        ready(part)
        part.copy_(source[start:start + step])
        release(part)
    return out
