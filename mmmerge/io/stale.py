"""Leftovers of runs that died without cleaning up (SIGKILL, power loss), cleared by the next run on the output.

A run writes `.<name>.tmp-XXXXXXXX` beside the output and, when it replaces a previous output, first moves that
one to `.<name>.old-XXXXXXXX`. Only a run holding the output's lock (see lock.py) looks, so every such folder
it finds belongs to a run that is gone. A temporary folder is half-written and is removed. An old folder with
no output in its place is a complete previous output whose replacement never happened: it is put back.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from ..terminal import printable

SUFFIX = r"[a-z0-9_]{8}"  # tempfile's random name characters; atomic.py makes names of this form


def leftovers(target: Path) -> tuple[list[Path], list[Path]]:
    """(temporary folders, old outputs) that runs on the output folder `target` left beside it."""
    tmp = re.compile(rf"\.{re.escape(target.name)}\.tmp-{SUFFIX}")
    old = re.compile(rf"\.{re.escape(target.name)}\.old-{SUFFIX}")
    temps, olds = [], []
    if not target.parent.is_dir():
        return temps, olds
    for p in sorted(target.parent.iterdir()):
        if p.is_dir() and not p.is_symlink():
            if tmp.fullmatch(p.name):
                temps.append(p)
            elif old.fullmatch(p.name):
                olds.append(p)
    return temps, olds


def clear_stale(target: Path) -> list[str]:
    """Remove the temporary folders of dead runs on `target` and put back a previous output whose replacement
    was cut off; call with the output's lock held. Returns one note per action (also printed on stderr)."""
    temps, olds = leftovers(target)
    notes = []
    for p in olds:
        if not target.exists():
            p.rename(target)
            notes.append(f"put back {target} from {p.name}, left by a run that was stopped while replacing it")
        else:
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed {p}, a replaced output left by a run that was stopped")
    for p in temps:
        shutil.rmtree(p, ignore_errors=True)
        notes.append(f"removed {p}, the unfinished output of a run that was stopped")
    for note in notes:
        print(f"note: {printable(note)}", file=sys.stderr)
    return notes
