"""Output folders that appear whole or not at all."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from ..errors import OutputExistsError


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty output folder (or a file in its place) unless `force`; call before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out}: output folder is not empty; pass --force (force=True) to replace it")


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool = False):
    """Yield a temporary folder beside `out`; on success it replaces `out`, on any error it is removed."""
    out = Path(out).absolute()
    check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
