"""Per-tensor statistics for the data-aware methods (regmean, fisher), read from the safetensors file that
mmmerge/calibration.py writes. A method gets the file's path as a recipe parameter and the tensor's name from the
engine (``MethodSpec.calling`` "named"), so it stays a function of one output tensor.

At plan time the engine resolves each model's path (``plan_statistics``): relative to the recipe file's folder, as
model paths are (the working folder for a recipe given as text or a dict), checked to exist and to be readable
before any tensor is read. The file's entries are keyed by the tensor's name in that input model: under ``slices:``
that renumber layers the output's name is another layer's, so the engine tells the method each input's own name
(``TensorTask.input_names``, passed as ``input_names``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..errors import MMMergeError, RecipeError, UnreadableFileError
from ._registry import Param

# A path; in a recipe file relative to the recipe's folder (see plan_statistics).
STATISTICS = Param(str, None, nullable=True,
                   help="statistics file of this model (`mmmerge calibrate`, mmmerge.calibration.collect_statistics), "
                        "relative to the recipe's folder; null: none, the tensor is averaged")


def reads_statistics(spec) -> bool:
    """Whether the method `spec` takes a per-model statistics file (regmean, fisher)."""
    return spec.model_params.get("statistics") is STATISTICS


def plan_statistics(spec, params: list[dict], models: list[str], folder: Path | None, where: str) -> list[dict]:
    """``params`` (one validated dict per model of ``models``) with each ``statistics`` path resolved for a method
    that reads statistics: relative to ``folder`` (the recipe file's folder; None: the working folder), made
    absolute and the file checked (its header read, no tensor). A missing or unreadable file is one line naming the
    parameter, the model and the path."""
    if not reads_statistics(spec):
        return params
    out = []
    for p, model in zip(params, models):
        value = p.get("statistics")
        if value is None:
            out.append(p)
            continue
        path = Path(value).expanduser()
        if not path.is_absolute() and folder is not None:
            path = Path(folder) / path
        path = path.absolute()
        if not path.is_file():
            raise RecipeError(f"{where}model {model}: parameter `statistics`: {path}: no such file")
        try:
            _open(str(path))
        except MMMergeError as e:
            raise type(e)(f"{where}model {model}: parameter `statistics`: {e}") from None
        out.append({**p, "statistics": str(path)})
    return out


@functools.lru_cache(maxsize=32)
def _open_version(path: str, mtime_ns: int):
    from safetensors import safe_open

    handle = safe_open(path, framework="pt")
    return handle, frozenset(handle.keys())


def _open(path: str):
    """The file's handle and keys, opened once per version of the file (one open per merge, not per tensor)."""
    from safetensors import SafetensorError

    if not Path(path).is_file():
        raise RecipeError(f"statistics file {path}: no such file")
    try:
        return _open_version(path, Path(path).stat().st_mtime_ns)
    except (SafetensorError, OSError) as e:
        raise UnreadableFileError(f"statistics file {path}: not a readable safetensors file ({e})") from None


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
