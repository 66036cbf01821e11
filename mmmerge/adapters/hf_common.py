"""What the transformers adapters share: reading a model folder's config, matching tensors to an
architecture's keys under a prefix, and carrying the folder's side files (tokenizer, generation config)."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

from ..checkpoint import Component, LazyTensor
from ..errors import MMMergeError, UnreadableFileError
from ..io.reader import read_json
from .hf_export import file_layout, meta_model

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def read_config(path: Path) -> dict | None:
    """config.json of a transformers folder, or None when `path` is not such a folder."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        return None
    return read_json(cfg_path)


@functools.lru_cache(maxsize=32)
def _layout(arch: str, config_json: str) -> tuple[dict, dict]:
    return file_layout(meta_model(Component("", arch, json.loads(config_json), {})))


def layout_of(component: Component) -> tuple[dict, dict]:
    """`file_layout` of the component's architecture, built once per (architecture, config) in a process:
    the inputs of a merge usually share one config, and building the meta model is the slow part of opening."""
    return _layout(component.arch, json.dumps(component.config, sort_keys=True, default=str))


def take_component(name: str, arch: str, config: dict, tensors: dict[str, LazyTensor], prefixes: tuple[str, ...],
                   where: Path, preprocess: dict | None = None) -> tuple[Component, str]:
    """Select the tensors of `arch`, renamed to the architecture's own keys, and the prefix they were under.

    The prefix is the one of `prefixes` under which most required keys are found. Every required key
    must be there with the shape the config implies; a tied duplicate (the lm_head of tied embeddings)
    is taken when present.
    """
    component = Component(name, arch, config, {}, preprocess)
    required, optional = layout_of(component)
    prefix = max(prefixes, key=lambda p: sum(1 for k in required if p + k in tensors))
    for key, shape in {**required, **optional}.items():
        src = prefix + key
        if src not in tensors:
            if key in required:
                raise UnreadableFileError(f"{where}: tensor {src} is missing ({arch} needs it)")
            continue
        if tuple(tensors[src].shape) != shape:
            raise UnreadableFileError(
                f"{where}: tensor {src} has shape {tuple(tensors[src].shape)}, the config implies {shape}")
        component.tensors[key] = tensors[src]
    return component, prefix


def leftovers(tensors: dict[str, LazyTensor], used: set[str]) -> dict[str, LazyTensor]:
    return {k: v for k, v in tensors.items() if k not in used}


def describe_rest(rest: dict[str, LazyTensor], why: str) -> dict[str, str]:
    """Group leftover tensor names by their first name part, for `Checkpoint.ignored`."""
    groups: dict[str, str] = {}
    for k in rest:
        groups.setdefault(k.split(".")[0], why)
    return groups


def copy_side_files(src: Path, dst: Path, skip: tuple[str, ...] = ("config.json",)) -> list[str]:
    """Copy a model folder's non-weight files (tokenizer, generation config, chat template...)."""
    copied = []
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and f.name not in skip and not f.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(f, Path(dst) / f.name)
            copied.append(f.name)
    return copied


def require_model_type(cfg: dict, where: Path) -> str:
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise MMMergeError(f"{where}/config.json: has no model_type")
    return model_type
