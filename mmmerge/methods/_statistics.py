"""Per-tensor statistics for the data-aware methods (regmean, fisher), read from the safetensors file that
mmmerge/calibration.py writes. A method gets the file's path as a recipe parameter and the tensor's name from the
engine (``MethodSpec.calling`` "named"), so it stays a function of one output tensor.

At plan time the engine resolves each model's path (``plan_statistics``): relative to the recipe file's folder, as
model paths are (the working folder for a recipe given as text or a dict), checked to exist and to be readable
before any tensor is read, and tagged with the tensor's name in that input model (``StatisticsFile.tensor``), the
name the file's entries are keyed by: under ``slices:`` that renumber layers the output's name is another layer's.
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


class StatisticsFile(str):
    """A ``statistics`` value resolved at plan time: the file's absolute path (a str, so the method's parameter
    schema takes it as it is), ``tensor``, this input's own name of the tensor, and ``planned``, the output's name
    for it at plan time. They differ under ``slices:`` that renumber layers; the file is keyed by the input's."""

    tensor: str | None
    planned: str | None

    def __new__(cls, path: str, tensor: str | None = None, planned: str | None = None):
        obj = super().__new__(cls, path)
        obj.tensor, obj.planned = tensor, planned
        return obj

    def __reduce__(self):
        return (StatisticsFile, (str(self), self.tensor, self.planned))

    def key_name(self, written: str | None) -> str | None:
        """The name this input's entries for the output tensor ``written`` are keyed by. ``written`` is
        ``planned`` as the output writes it (a multimodal layout may rename its prefix, never a layer number), so
        the input's name is ``tensor`` with that prefix renamed the same way."""
        if written is None or self.tensor is None or self.tensor == self.planned or self.planned is None:
            return written
        n = 0
        while n < min(len(written), len(self.planned)) and written[-1 - n] == self.planned[-1 - n]:
            n += 1
        old_prefix, new_prefix = self.planned[:len(self.planned) - n], written[:len(written) - n]
        if not self.tensor.startswith(old_prefix):
            return written
        return new_prefix + self.tensor[len(old_prefix):]


def plan_statistics(spec, params: list[dict], models: list[str], tensors: list[str], planned: str,
                    folder: Path | None, where: str) -> list[dict]:
    """``params`` (one validated dict per model of ``models``) with each ``statistics`` path resolved for a method
    that reads statistics: relative to ``folder`` (the recipe file's folder; None: the working folder), made
    absolute, the file checked (its header read, no tensor), and tagged with ``tensors[i]``, the tensor's name in
    model i, and ``planned``, the output tensor's name. A missing or unreadable file is one line naming the
    parameter, the model and the path."""
    if spec.model_params.get("statistics") is not STATISTICS:
        return params
    out = []
    for p, model, tensor in zip(params, models, tensors):
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
        out.append({**p, "statistics": StatisticsFile(str(path), tensor, planned)})
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
    key = f"{kind}:{path.key_name(name) if isinstance(path, StatisticsFile) else name}"
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
