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
RELEASED_EVERY = 8 << 20  # bytes let go in one call: each call stops every thread of the process to flush its TLB,
#                           so releasing every 512 KiB slice on its own cost more than the pages' faults
SLICE = 8 << 20  # bytes copied at a time by `copy`


class _Mapping:
    """A registered mapping: where it lies, and the pages done with but not yet let go (`pending`, byte offsets)."""

    def __init__(self, mapping: mmap.mmap, address: int, *, shared: bool):
        key = id(mapping)
        self.ref = weakref.ref(mapping, lambda _: _TRACKED.pop(key, None))
        self.address, self.length, self.shared, self.pending = address, len(mapping), shared, None

    def release(self, lo: int, hi: int) -> None:
        """Let go of bytes lo..hi (whole pages), with the pending ones before them, once RELEASED_EVERY are due;
        a range that starts before the pending ones (a new pass over the tensor) lets those go first."""
        if self.pending is not None and lo < self.pending[0]:
            self.flush()
        self.pending = (lo, hi) if self.pending is None else (self.pending[0], max(hi, self.pending[1]))
        if self.pending[1] - self.pending[0] >= RELEASED_EVERY:
            self.flush()

    def flush(self) -> None:
        mapping = self.ref()
        if self.pending is not None and mapping is not None and not mapping.closed:
            lo, hi = self.pending
            mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        self.pending = None


_TRACKED: dict[int, _Mapping] = {}  # id(mapping) -> its registration


def track(mapping: mmap.mmap, address: int, *, shared: bool) -> None:
    """Register a mapping at `address` whose pages `release` may drop (`shared`: the output file's, which `ready`
    also makes writable). Unregistered when the mapping is freed or `untrack`ed."""
    _TRACKED[id(mapping)] = _Mapping(mapping, address, shared=shared)


def untrack(mapping: mmap.mmap) -> None:
    _TRACKED.pop(id(mapping), None)


def _pages(t: torch.Tensor, *, outward: bool):
    """(registration, first byte, end byte) of the whole pages of a tracked mapping that `t`'s bytes cover
    (`outward`: also the pages it covers in part), or None."""
    if not _TRACKED or not t.is_contiguous() or t.device.type != "cpu":
        return None
    begin = t.data_ptr()
    end = begin + t.numel() * t.element_size()
    for entry in list(_TRACKED.values()):  # a snapshot: another thread, or a freed mapping, may change it
        if entry.address <= begin and end <= entry.address + entry.length:
            mapping = entry.ref()
            if mapping is None or mapping.closed:
                return None
            page = mmap.PAGESIZE
            lo, hi = begin - entry.address, end - entry.address
            lo, hi = (lo // page * page, -(-hi // page) * page) if outward else (-(-lo // page) * page, hi // page * page)
            return (entry, lo, min(hi, entry.length)) if hi > lo else None
    return None


def release(t: torch.Tensor) -> None:
    """Let the pages wholly inside `t`'s bytes leave the process, where `t` lies in a tracked mapping: with those
    released before them, once RELEASED_EVERY bytes are due."""
    found = _pages(t, outward=False)
    if found is not None:
        entry, lo, hi = found
        entry.release(lo, hi)


def ready(t: torch.Tensor) -> None:
    """Make the pages of `t`'s bytes writable in one call, where `t` lies in a tracked shared mapping (a fault at
    the first write to each page is 3-5x slower)."""
    found = _pages(t, outward=True)
    if found is not None and found[0].shared:
        entry, lo, hi = found
        try:
            entry.ref().madvise(MADV_POPULATE_WRITE, lo, hi - lo)
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
