"""One run per output folder: an exclusive lock held from the first check to the final rename.

Without it two runs on the same `--out` both succeed and the later one silently replaces the earlier one's
result. The lock is `flock` on `.<name>.lock` beside the output: the kernel drops it when the process dies,
however it dies, so a crashed run never blocks the next one. The file is removed when the run ends (after
checking, on taking the lock, that the file is still the one at that path, so a run that opened it just
before it was removed does not hold a lock nobody else can see).

Within one process the lock is re-entrant for the thread that holds it: a command that claims its output and
then writes it through `atomic_output_dir` takes it once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputBusyError
from ..signals import deferred_signals

try:
    import fcntl
except ImportError:  # not POSIX: an exclusively created file stands in for the lock
    fcntl = None


@dataclass
class _Held:
    thread: int
    depth: int
    fd: int
    path: Path


_HELD: dict[Path, _Held] = {}
_GUARD = threading.Lock()


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _busy(target: Path, fd: int | None) -> OutputBusyError:
    pid = ""
    if fd is not None:
        with contextlib.suppress(OSError, ValueError):
            pid = f" (pid {int(os.pread(fd, 32, 0).split()[0])})"
    return OutputBusyError(f"{target}: another mmmerge run{pid} is writing this output folder; wait for it to "
                           "finish or choose another folder")


def _acquire(target: Path) -> int:
    path = lock_path(target)
    if fcntl is None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise OutputBusyError(f"{target}: another mmmerge run is writing this output folder (or one was killed: "
                                  f"then delete {path})") from None
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            err = _busy(target, fd)
            os.close(fd)
            raise err from None
        try:
            now = os.stat(path)
            mine = os.fstat(fd)
            current = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the previous holder removed this file after we opened it: take the lock again
    raise _busy(target, None)


def _release(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)  # while still holding the lock: see the module docstring
    os.close(fd)


@contextlib.contextmanager
def output_lock(target: Path):
    """Hold the lock on the output folder `target` (an absolute, resolved path) for the `with` block.

    Raises OutputBusyError at once when another process (or another thread) holds it."""
    me = threading.get_ident()
    with _GUARD:
        held = _HELD.get(target)
        if held is not None:
            if held.thread != me:
                raise _busy(target, held.fd)
            held.depth += 1
    if held is not None:
        try:
            yield
        finally:
            held.depth -= 1
        return
    with deferred_signals():  # a Ctrl-C here must not leave a lock this process holds but no longer tracks
        fd = _acquire(target)
        with _GUARD:
            _HELD[target] = _Held(me, 1, fd, lock_path(target))
    try:
        yield
    finally:
        with deferred_signals():
            with _GUARD:
                del _HELD[target]
            _release(fd, lock_path(target))


def holds_lock(target: Path) -> bool:
    """True when this thread holds the lock on `target`."""
    held = _HELD.get(target)
    return held is not None and held.thread == threading.get_ident()
