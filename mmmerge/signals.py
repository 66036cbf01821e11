"""Ctrl-C and `kill` end a run cleanly: the temporary output folder is removed, one line is printed.

Python turns SIGINT into KeyboardInterrupt, so `except BaseException` cleanup runs; SIGTERM, by default, ends
the process at once and leaves the temporary folder behind. `sigterm_raises` makes SIGTERM raise `Terminated`
the same way (the CLI installs it for the whole command). `deferred_signals` holds both signals back while a
few lines must run to the end (creating or removing the temporary folder, the final renames) and delivers them
right after.
"""

from __future__ import annotations

import contextlib
import signal
import threading

DEFERRED = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs (a BaseException, like KeyboardInterrupt, so no
    `except Exception` swallows it)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises():
    """Within the block SIGTERM raises `Terminated` in the main thread (elsewhere: no change)."""
    if not _main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


_pending: list[int] = []
_depth = [0]


def _record(signum, frame):
    _pending.append(signum)


@contextlib.contextmanager
def deferred_signals():
    """SIGINT and SIGTERM that arrive within the block are delivered when it ends (main thread only; elsewhere
    signals do not interrupt Python code anyway)."""
    if not _main_thread() or _depth[0]:
        _depth[0] += _main_thread()
        try:
            yield
        finally:
            _depth[0] -= _main_thread()
        return
    old = {s: signal.signal(s, _record) for s in DEFERRED}
    _depth[0] = 1
    _replaced.append(old)
    try:
        yield
    finally:
        _replaced.pop()
        _depth[0] = 0
        _restore(old)
        _deliver()


_replaced: list[dict] = []  # the handlers the running deferred_signals block replaced


def _restore(handlers: dict) -> None:
    for s, handler in handlers.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _deliver() -> None:
    """The first signal held back, handled as it would have been: KeyboardInterrupt, Terminated, ... The Python handler
    is called here, not reached by raising the signal again, which goes through the C library's handler: in a search
    under load a signal raised again was once lost (tests/test_search.py saw another C handler installed by then)."""
    if _pending:
        first = _pending[0]
        _pending.clear()
        handler = signal.getsignal(first)
        if callable(handler):
            handler(first, None)
        else:  # SIG_DFL: the signal's own default action; SIG_IGN: nothing
            signal.raise_signal(first)


@contextlib.contextmanager
def signals_delivered():
    """Within a deferred_signals block, the stretch where SIGINT and SIGTERM act at once again (one held back
    arrives first): a search trial may be cut anywhere, optuna's bookkeeping around it may not."""
    if not _main_thread() or not _replaced or _depth[0] != 1:
        yield
        return
    _restore(_replaced[-1])
    _depth[0] = 0
    try:
        _deliver()
        yield
    finally:
        _depth[0] = 1
        for s in DEFERRED:
            signal.signal(s, _record)
