"""Per-tensor statistics for the data-aware methods (regmean, fisher), read from the safetensors file that
mmmerge/calibration.py writes. A method gets the file's path as a recipe parameter and the tensor's name from the
engine (``MethodSpec.takes_name``), so it stays a function of one output tensor."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..errors import RecipeError
from ._registry import Param

# A path, absolute or relative to the working directory.
STATISTICS = Param(str, None, nullable=True,
                   help="statistics file of this model (mmmerge.calibration.collect_statistics); "
                        "null: none, the tensor is averaged")


@functools.lru_cache(maxsize=32)
def _open_version(path: str, mtime_ns: int):
    from safetensors import safe_open

    handle = safe_open(path, framework="pt")
    return handle, frozenset(handle.keys())


def _open(path: str):
    """The file's handle and keys, opened once per version of the file (one open per merge, not per tensor)."""
    if not Path(path).is_file():
        raise RecipeError(f"statistics file {path}: no such file")
    return _open_version(path, Path(path).stat().st_mtime_ns)


def statistic(path: str | None, kind: str, name: str | None, method: str) -> torch.Tensor | None:
    """The ``kind`` ("gram" or "fisher") statistic of tensor ``name`` in file ``path``; None when there is no file
    or the file has no such entry (a tensor the calibration did not see, such as a norm for "gram")."""
    if path is None:
        return None
    if name is None:
        raise RecipeError(f"{method}: statistics need the tensor's name; merge through mmmerge.merge or pass name=")
    handle, keys = _open(str(path))
    key = f"{kind}:{name}"
    return handle.get_tensor(key) if key in keys else None


def all_or_none(found: list, kind: str, name: str, method: str) -> bool:
    """True when every model has the statistic, False when none has; a mix is an error (silently averaging some
    models would not be the method)."""
    have = [f is not None for f in found]
    if all(have):
        return True
    if any(have):
        missing = [i for i, h in enumerate(have) if not h]
        raise RecipeError(f"{method}: tensor {name}: the statistics of model(s) {missing} have no {kind} entry "
                          "while the others do")
    return False
