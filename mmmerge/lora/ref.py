"""mergekit's `BASE+LORA` model references: a path that exists is a path; otherwise the first `+` that
splits the reference into an existing model and an existing adapter folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import MMMergeError, UnreadableFileError


def split_model_ref(ref: str, resolve: Callable[[str], Path]) -> tuple[Path, Path] | None:
    """(base, lora) resolved by `resolve`, or None when `ref` names a plain path."""
    if "+" not in ref:
        return None
    try:
        resolve(ref)
        return None
    except MMMergeError:
        pass
    for i, ch in enumerate(ref):
        if ch != "+":
            continue
        try:
            return resolve(ref[:i]), resolve(ref[i + 1:])
        except MMMergeError:
            continue
    raise UnreadableFileError(f"{ref}: no such file or folder, and no split BASE+LORA names an existing model and "
                              f"adapter folder")
