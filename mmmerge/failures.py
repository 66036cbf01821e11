"""What the command line says when a command stops other than by an MMMergeError.

A user's mistake or a fault of the machine (disk full, a read-only folder, a broken image, a file that is not
UTF-8, Ctrl-C) is one line and an exit code; only a real bug prints a traceback, followed by a line that asks
for a report. Exit codes: 2 bad input, 1 the environment failed (or a bug), 130 SIGINT, 143 SIGTERM.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback

from .signals import Terminated
from .terminal import printable

BAD_INPUT, ENVIRONMENT, BUG, SIGINT_EXIT, SIGTERM_EXIT = 2, 1, 1, 130, 143

OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or write the output elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write the output elsewhere",
    errno.EROFS: "the file system is read-only; write the output elsewhere",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.ENOMEM: "out of memory",
}


def _os_line(e: OSError) -> str:
    what = OS_HINTS.get(e.errno, e.strerror) if e.errno is not None else None
    if what is None:
        return str(e)
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    return f"{' -> '.join(names)}: {what}" if names else what


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def describe(e: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for a failure that is not a bug; None for a bug."""
    if isinstance(e, (KeyboardInterrupt, Terminated)):  # `kept`: what a command keeps on purpose (search's study)
        what, code = ("interrupted (SIGINT)", SIGINT_EXIT) if isinstance(e, KeyboardInterrupt) else \
            ("terminated (SIGTERM)", SIGTERM_EXIT)
        return f"{what}: stopped, and {getattr(e, 'kept', 'no partial output was left')}", code
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({e.reason} at byte {e.start})", BAD_INPUT
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg}: line {e.lineno} column {e.colno})", BAD_INPUT
    if type(e).__module__.startswith("yaml"):
        return f"not valid YAML ({' '.join(str(e).split())[:200]})", BAD_INPUT
    if type(e).__name__ == "DecompressionBombError":  # PIL's own check (our image readers check sizes first)
        return f"an image is too large to decode safely ({_first_line(e)})", BAD_INPUT
    if isinstance(e, OSError):  # disk full, read-only, permissions; PIL's unreadable images are OSErrors too
        return _os_line(e), ENVIRONMENT if e.errno is not None else BAD_INPUT
    if isinstance(e, MemoryError):
        return "out of memory", ENVIRONMENT
    return None


def report(e: BaseException) -> int:
    """Print what `e` means on stderr (one line, or a traceback and a plea for a bug report); the exit code."""
    from . import __version__

    if isinstance(e, BrokenPipeError):  # the reader stopped reading (`| head`): not a failure, nothing to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second complaint at exit
        except (OSError, ValueError):
            pass
        return 0
    known = describe(e)
    if known is not None:
        line, code = known
        print(f"error: {printable(line)}", file=sys.stderr)
        return code
    traceback.print_exception(e, file=sys.stderr)
    print(f"error: this is a bug in mmmerge {__version__}, not a problem with your input; please report it with "
          "the command you ran and the traceback above", file=sys.stderr)
    return BUG
