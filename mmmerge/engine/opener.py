"""Model references of a recipe -> opened checkpoints, each opened once."""

from __future__ import annotations

from pathlib import Path

from ..adapters import open_checkpoint
from ..checkpoint import Checkpoint
from ..errors import UnreadableFileError


class Opener:
    """Open each referenced checkpoint once; paths are relative to the working directory, then to the recipe."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.cache: dict[Path, Checkpoint] = {}
        self.loras: dict[Path, tuple[Path, Path]] = {}  # key of a `BASE+LORA` reference -> (base, lora)

    def path(self, ref: str) -> Path:
        """The absolute path of `ref`; for `BASE+LORA` a key `BASE+LORA` of the two absolute paths."""
        from ..lora import split_model_ref

        parts = split_model_ref(ref, self._plain_path)
        if parts is None:
            return self._plain_path(ref)
        key = Path(f"{parts[0]}+{parts[1]}")
        self.loras[key] = parts
        return key

    def _plain_path(self, ref: str) -> Path:
        p = Path(ref).expanduser()
        if not p.is_absolute() and not p.exists() and self.folder is not None and (self.folder / p).exists():
            p = self.folder / p
        if not p.exists():
            raise UnreadableFileError(f"{ref}: no such file or folder")
        return p.absolute()

    def __call__(self, ref: str) -> Checkpoint:
        p = self.path(ref)
        if p not in self.cache:
            if p in self.loras:
                from ..lora import open_with_lora

                self.cache[p] = open_with_lora(*self.loras[p])
            else:
                self.cache[p] = open_checkpoint(p)
        return self.cache[p]
