"""Architecture adapters: each reads one source family into the common namespace and writes it back.

An adapter module defines
  FORMAT: str                        short name shown by `inspect`
  DESCRIPTION: str                   what it recognises, for error messages
  detect(path: Path) -> bool         cheap: looks at file names and small JSON files only
  read(path: Path) -> Checkpoint     lazy: no tensor data is read
  write_source(checkpoint, out, force=False) -> None   the exact source layout back (round trip)
`open_checkpoint` tries them in order; the first whose `detect` says yes reads the path.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import UnknownFormatError, UnreadableFileError
from . import hf_causal_lm, hf_multimodal, hf_vision, hf_whole, open_clip_vision, timm_vision

# hf_whole last: it takes any transformers folder the others do not split into components
ADAPTERS = [open_clip_vision, timm_vision, hf_multimodal, hf_vision, hf_causal_lm, hf_whole]


def detect_adapter(path: Path):
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(f"{path}: no such file or folder")
    if not path.is_file() and not path.is_dir():  # a device, pipe or socket (reading one may never end)
        raise UnreadableFileError(f"{path}: not a regular file or folder (a device, pipe or socket{links_to(path)}); "
                                  "give a model folder or a weights file")
    for adapter in ADAPTERS:
        if adapter.detect(path):
            return adapter
    recognised = "; ".join(a.DESCRIPTION for a in ADAPTERS)
    raise UnknownFormatError(f"{path}: {describe_found(path)}; recognised formats: {recognised}")


def open_checkpoint(path: Path) -> Checkpoint:
    """Read any supported checkpoint lazily into the common namespace."""
    return detect_adapter(path).read(Path(path))


def links_to(path: Path) -> str:
    return f", linked to {path.resolve()}" if path.is_symlink() else ""


def describe_found(path: Path) -> str:
    if path.is_file():
        return f"a file of type '{path.suffix or 'none'}' that is no model folder"
    names = sorted(p.name for p in path.iterdir())[:6]
    return f"a folder holding {', '.join(names) if names else 'nothing'}"
