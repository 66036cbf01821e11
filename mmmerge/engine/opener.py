"""Model references of a recipe -> opened checkpoints, each opened once."""

from __future__ import annotations

from pathlib import Path

from ..adapters import open_checkpoint
from ..checkpoint import Checkpoint
from ..errors import UnreadableFileError
from ..hub import is_hub_id, resolve


class Opener:
    """Open each referenced checkpoint once. A relative path is relative to the recipe file's folder (to the
    working folder for a recipe given as text or a dict), so one recipe never mixes models from two places; a
    reference that is no path but looks like `org/name[@revision]` is a hub model (`hub.resolve`)."""

    def __init__(self, folder: Path | None, *, offline: bool | None = None):
        self.folder = folder
        self.offline = offline
        self.cache: dict[Path, Checkpoint] = {}
        self.loras: dict[Path, tuple[Path, Path]] = {}  # key of a `BASE+LORA` reference -> (base, lora)
        self.hub: dict[str, Path] = {}  # hub ID -> its local snapshot
        self.side_only: list[Path] = []  # folders read for their side files alone (a tokenizer_source outside the merge)

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
        if not p.is_absolute() and self.folder is not None:
            p = self.folder / p
        if p.exists():
            return p.absolute()
        if is_hub_id(ref):
            if ref not in self.hub:
                self.hub[ref] = resolve(ref, offline=self.offline)
            return self.hub[ref]
        raise UnreadableFileError(f"{p}: no such file or folder" if p != Path(ref) else f"{ref}: no such file or folder")

    def __call__(self, ref: str) -> Checkpoint:
        p = self.path(ref)
        if p not in self.cache:
            if p in self.loras:
                from ..lora import open_with_lora

                self.cache[p] = open_with_lora(*self.loras[p])
            else:
                self.cache[p] = open_checkpoint(p)
        return self.cache[p]
