"""A model folder as loaders read it (config, safetensors, the source's side files), written whole or not at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Mapping

from ..checkpoint import LazyTensor
from .atomic import atomic_output_dir
from .writer import DEFAULT_SHARD_BYTES, write_safetensors

__all__ = ["WEIGHT_SUFFIXES", "copy_side_files", "write_model_folder"]

# weight files (of transformers, open_clip, timm, torch) are never side files
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".index.json")


def copy_side_files(src: Path, dst: Path, skip: tuple[str, ...] = ("config.json",)) -> list[str]:
    """Copy a model folder's side files (tokenizer, processor, generation config, chat template ...): every
    file but weights, hidden files and the names in `skip`. Returns the names copied."""
    copied = []
    for f in sorted(Path(src).iterdir()):
        if (f.is_file() and f.name not in skip and not f.name.startswith(".")
                and not f.name.endswith(WEIGHT_SUFFIXES)):
            shutil.copy2(f, Path(dst) / f.name)
            copied.append(f.name)
    return copied


def write_model_folder(out: Path, tensors: Mapping[str, LazyTensor], config: dict, *, force: bool = False,
                       config_name: str = "config.json", side_files: Path | None = None,
                       files: Mapping[str, dict] | None = None, prefix: str = "model",
                       max_shard_bytes: int = DEFAULT_SHARD_BYTES, metadata: dict | None = None,
                       check: Callable[[Path], None] | None = None) -> None:
    """Write `out` through `atomic_output_dir`: the side files of the folder `side_files` (when it is one),
    `config` as `config_name`, each of `files` (name -> JSON object), then `tensors` as `prefix.safetensors`
    (sharded past `max_shard_bytes`). `check(folder)` runs before any tensor data is read, with the config
    files in place (a check that builds the model from them)."""
    with atomic_output_dir(out, force) as tmp:
        if side_files is not None and Path(side_files).is_dir():
            copy_side_files(side_files, tmp, skip=(config_name,))
        for name, obj in {config_name: config, **(files or {})}.items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        if check is not None:
            check(tmp)
        write_safetensors(tmp, tensors, prefix=prefix, max_shard_bytes=max_shard_bytes, metadata=metadata)
