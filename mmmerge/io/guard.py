"""What an output folder may be: the rules every writing command checks before it does any work.

The output is replaced as a whole, so a wrong `--out` would delete whatever is there. The rules:
- it is not empty text or `.`, and not the working folder or a folder above it;
- it is not, does not contain, and does not sit inside any input (paths compared after resolving symlinks);
  data the run only reads (an image folder, a questions file) must not be it or be inside it;
- it is absent, an empty folder, or, with `force`, a folder holding a previous mmmerge output (one carrying
  the marker file every mmmerge output gets). Nothing else is ever replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from ..errors import OutputExistsError, UnsafeOutputError

MARKER = ".mmmerge-output"  # written into every output folder: `force` may replace a folder that holds it


def marker_text() -> str:
    from .. import __version__

    return json.dumps({"written_by": f"mmmerge {__version__}"}) + "\n"


def is_previous_output(folder: Path) -> bool:
    """True when `folder` holds the marker of an mmmerge output (a regular file, not a link)."""
    marker = Path(folder) / MARKER
    return marker.is_file() and not marker.is_symlink()


def _paths(items: Iterable) -> list[Path]:
    out = []
    for p in items:
        if p is None:
            continue
        if isinstance(p, (list, tuple)):
            out += _paths(p)
        else:
            out.append(Path(p))
    return out


def check_not_over_inputs(out: Path, *, inputs: Iterable = (), data: Iterable = ()) -> None:
    """Refuse an output that is, contains or sits inside an input model, or is or contains a data path read."""
    target = Path(out).resolve()
    for src in _paths(inputs):
        real = src.resolve()
        if target == real or target in real.parents:
            raise UnsafeOutputError(f"{out}: the output folder would replace the input {src}; choose another "
                                    "output folder")
        if real in target.parents:
            raise UnsafeOutputError(f"{out}: the output folder is inside the input {src}; choose a folder outside it")
    for src in _paths(data):
        real = src.resolve()
        if target == real or target in real.parents:
            raise UnsafeOutputError(f"{out}: the output folder would replace {src}, which this run reads; choose "
                                    "another output folder")


def check_output_path(out: Path) -> None:
    """The checks that need no inputs and no look inside: not empty text, `.`, the working folder (or above it),
    the root, or an existing file."""
    if not isinstance(out, (str, os.PathLike)):
        raise UnsafeOutputError(f"the output must be a folder path, got {out!r}")
    if str(out) == "" or Path(out) == Path("."):
        raise UnsafeOutputError("the output folder is empty or '.'; name a new folder (e.g. --out merged)")
    target = Path(out).resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise UnsafeOutputError(f"{out}: the output folder is the working folder or holds it; name a new folder")
    if target.parent == target:
        raise UnsafeOutputError(f"{out}: the root folder cannot be an output folder")
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")


def check_output_dir(out: Path, force: bool = False, *, inputs: Iterable = (), data: Iterable = ()) -> None:
    """Refuse an output folder this run must not write (see the module docstring); call before any work."""
    check_output_path(out)
    check_not_over_inputs(out, inputs=inputs, data=data)
    target = Path(out).resolve()
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not force:
        raise OutputExistsError(f"{out}: output folder is not empty; pass --force (force=True) to replace it")
    if not is_previous_output(target):
        raise UnsafeOutputError(f"{out}: --force replaces only a folder written by mmmerge (it holds {MARKER}) or "
                                "an empty one, and this folder is neither; move it away or choose another folder")


def write_marker(folder: Path) -> None:
    """Mark `folder` as an mmmerge output (what `force` looks for)."""
    (Path(folder) / MARKER).write_text(marker_text())
