"""Output folders that appear whole or not at all, and never over something they must not replace.

The output is written into `.<name>.tmp-XXXXXXXX` beside it (created with the user's umask) and renamed into
place only when everything is written; on any error, Ctrl-C or SIGTERM the temporary folder is removed. The
final rename never replaces a folder that appeared meanwhile (rename.py). The run holds the output's claim
(claim.py: checks, lock, leftovers of dead runs) throughout.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

from ..errors import OutputExistsError
from .claim import claim_output
from .guard import check_output_dir, is_previous_output, write_marker
from .rename import rename_noreplace
from ..signals import deferred_signals

__all__ = ["atomic_output_dir", "atomic_write_text", "check_output_dir"]

NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # the output's fault, not an input's


def _make_temp(target: Path) -> Path:
    """A new empty folder `.<name>.tmp-XXXXXXXX` beside `target`, mode 0777 less the umask (mkdtemp's is 0700)."""
    while True:
        suffix = "".join(secrets.choice(NAME_CHARS) for _ in range(8))
        tmp = target.parent / f".{target.name}.tmp-{suffix}"
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


def _appeared(out: Path) -> OutputExistsError:
    return OutputExistsError(f"{out}: something was created there while this run was writing; it was left as it "
                             "is and this run's output was removed")


def _commit(tmp: Path, target: Path, out: Path, *, was: str) -> None:
    """Put `tmp` in place of `target`. `was`: what `target` was when the run began ("absent", "empty" or
    "previous", a marked mmmerge output it may replace); anything else there now is left alone."""
    old = None
    if was == "empty":
        try:
            os.rmdir(target)
        except FileNotFoundError:
            pass
        except OSError:
            raise _appeared(out) from None
    elif was == "previous" and target.is_dir() and not target.is_symlink() and is_previous_output(target):
        old = target.with_name(f".{target.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        rename_noreplace(target, old)
    try:
        rename_noreplace(tmp, target)
    except FileExistsError:
        raise _appeared(out) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool = False, *, inputs=(), data=()):
    """Yield a temporary folder beside `out`; on success it replaces `out`, on any error it is removed.

    `force`: replace a previous mmmerge output (guard.py says what may be replaced); `inputs` / `data`: paths
    the run reads, which the output must not replace."""
    with claim_output(Path(out), force=force, inputs=inputs, data=data) as target:
        was = ("absent" if not target.exists() else
               "previous" if any(target.iterdir()) else "empty")
        tmp = None
        try:
            with deferred_signals():
                tmp = _make_temp(target)
                write_marker(tmp)
            yield tmp
            with deferred_signals():
                _commit(tmp, target, Path(out), was=was)
                tmp = None
        except BaseException as e:
            if tmp is not None:
                with deferred_signals():
                    shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
                e.filename, e.filename2 = str(out), None  # not the temporary file's name: the output it was for
            raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader finds the old content or the new, never half of it: into a hidden
    file beside it (one per process), then renamed over it; on any error the hidden file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
