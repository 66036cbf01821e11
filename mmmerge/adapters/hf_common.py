"""What the transformers adapters share: reading a model folder's config, matching tensors to an
architecture's keys under a prefix, and carrying the folder's side files (tokenizer, generation config)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Callable, TypeVar

from ..checkpoint import Component, LazyTensor
from ..errors import MMMergeError, UnreadableFileError
from ..io.atomic import atomic_write_text
from ..io.check import check_tensors
from ..io.folder import copy_side_files  # noqa: F401  (searching/candidate.py imports it from here)
from ..io.reader import read_json

T = TypeVar("T")


def read_config(path: Path) -> dict | None:
    """config.json of a transformers folder, or None when `path` is not such a folder."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        return None
    return read_json(cfg_path)


def layout_cache_dir() -> Path | None:
    """Where facts about transformers classes are kept between runs: $MMMERGE_CACHE_DIR, else
    ~/.cache/mmmerge (None: disabled, with MMMERGE_CACHE_DIR set to an empty string)."""
    root = os.environ.get("MMMERGE_CACHE_DIR")
    if root == "":
        return None
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmmerge"
    return Path(root) / "layouts"


def transformers_version() -> str:
    """The installed transformers version, read without importing transformers (0.7 s)."""
    return version("transformers")


def _kept_on_disk(kind: str, key: str, compute: Callable[[], dict], parse: Callable[[dict], T] = dict) -> T:
    """`parse(compute())`, with the JSON object `compute()` kept on disk under (transformers version, kind, key).

    What is kept here depends only on the installed transformers and the key, and computing it imports
    transformers and the model class (0.7 s + 1.7 s and 230 MB per process), more than a whole linear merge
    of a small model spends on its tensors. An entry that does not parse is computed again and rewritten;
    a read-only cache only costs time."""
    folder = layout_cache_dir()
    digest = hashlib.sha256(f"{transformers_version()}\n{kind}\n{key}".encode()).hexdigest()
    file = folder / f"{kind}-{digest}.json" if folder is not None else None
    if file is not None and file.is_file():
        try:
            return parse(json.loads(file.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    data = compute()
    if file is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(file, json.dumps(data))
        except OSError:
            pass
    return parse(data)


def _shapes(data: dict) -> tuple[dict, dict]:
    return tuple({k: tuple(v) for k, v in data[part].items()} for part in ("required", "optional"))


@functools.lru_cache(maxsize=32)
def _layout(arch: str, config_json: str) -> tuple[dict, dict]:
    def compute() -> dict:
        from .hf_export import file_layout, meta_model  # imports torch: only when the layout is not on disk

        required, optional = file_layout(meta_model(Component("", arch, json.loads(config_json), {})))
        return {"required": required, "optional": optional}

    return _kept_on_disk("layout", f"{arch}\n{config_json}", compute, _shapes)


@functools.lru_cache(maxsize=32)
def _class_layout(cls: str, config_json: str) -> dict:
    def compute() -> dict:
        from .hf_export import class_on_meta, file_layout, memory_layout

        model = class_on_meta(cls, config_json)
        required, optional = memory_layout(model)
        saved_required, saved_optional = file_layout(model)
        modules = {name: type(module).__name__ for name, module in model.named_modules()}
        return {"required": required, "optional": optional, "modules": modules,
                "saved": {"required": saved_required, "optional": saved_optional}}

    def parse(data: dict) -> dict:
        required, optional = _shapes(data)
        saved_required, saved_optional = _shapes(data["saved"])
        return {"required": required, "optional": optional, "modules": dict(data["modules"]),
                "saved": {"required": saved_required, "optional": saved_optional}}

    return _kept_on_disk("class-layout", f"{cls}\n{config_json}", compute, parse)


def class_layout(cls: str, config: dict) -> dict:
    """The in-memory layout of a whole transformers class built from `config` (a config.json dict):
    {"required": name -> shape, "optional": tied duplicates, "modules": module name -> class name, "saved":
    {"required", "optional"} as its save path names them (converted: experts one tensor each)}; kept on disk per
    transformers version like `layout_of`."""
    return _class_layout(cls, json.dumps(config, sort_keys=True, default=str))


def layout_of(component: Component) -> tuple[dict, dict]:
    """`file_layout` of the component's architecture, built once per (architecture, config) and transformers
    version (see `_kept_on_disk`): the inputs of a merge usually share one config."""
    return _layout(component.arch, json.dumps(component.config, sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def auto_class_names(mapping: str) -> dict[str, str]:
    """model_type -> class name, from one of transformers' auto mappings (`MODEL_MAPPING_NAMES`,
    `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`), without importing transformers once kept on disk."""

    def compute() -> dict:
        from transformers.models.auto import modeling_auto

        return dict(getattr(modeling_auto, mapping))

    return _kept_on_disk("names", mapping, compute)


@functools.lru_cache(maxsize=32)
def base_model_prefix(arch: str) -> str:
    """The attribute under which a transformers class holds its base model (`model` for most LLMs)."""

    def compute() -> dict:
        import transformers

        return {"base_model_prefix": getattr(transformers, arch).base_model_prefix}

    return _kept_on_disk("class", arch, compute)["base_model_prefix"]


def take_component(name: str, arch: str, config: dict, tensors: dict[str, LazyTensor], prefixes: tuple[str, ...],
                   where: Path, preprocess: dict | None = None) -> tuple[Component, str]:
    """Select the tensors of `arch`, renamed to the architecture's own keys, and the prefix they were under.

    The prefix is the one of `prefixes` under which most required keys are found. Every required key
    must be there with the shape the config implies; a tied duplicate (the lm_head of tied embeddings)
    is taken when present.
    """
    component = Component(name, arch, config, {}, preprocess)
    try:
        required, optional = layout_of(component)
    except UnreadableFileError as e:
        raise UnreadableFileError(f"{where}: {name}: {e}") from e
    prefix = max(prefixes, key=lambda p: sum(1 for k in required if p + k in tensors))
    if any(prefix + k not in tensors for k in required):
        required, optional, prefix = _in_memory_layout(arch, config, tensors, prefixes, (required, optional, prefix))
    check_tensors({prefix + k: s for k, s in required.items()}, tensors, str(where),
                  optional={prefix + k: s for k, s in optional.items()}, allow_unexpected=True,
                  expected_from=f"{arch} with this config")
    component.tensors = {k: tensors[prefix + k] for k in {**required, **optional} if prefix + k in tensors}
    return component, prefix


def _in_memory_layout(arch: str, config: dict, tensors: dict[str, LazyTensor], prefixes: tuple[str, ...],
                      file: tuple[dict, dict, str]) -> tuple[dict, dict, str]:
    """The class's in-memory names when the files hold more of them than of its save-time names: transformers 5
    loads either, and writes some classes' experts fused as it holds them (Mixtral, Qwen3-MoE; mergekit-moe and
    `mmmerge moe` write them so). Otherwise `file`, the save-time layout, whose missing names the caller reports."""
    try:
        layout = class_layout(arch, config)
    except MMMergeError:
        return file
    required, optional = layout["required"], layout["optional"]
    prefix = max(prefixes, key=lambda p: sum(1 for k in required if p + k in tensors))
    found = sum(1 for k in required if prefix + k in tensors)
    return (required, optional, prefix) if found > sum(1 for k in file[0] if file[2] + k in tensors) else file


def leftovers(tensors: dict[str, LazyTensor], used: set[str]) -> dict[str, LazyTensor]:
    return {k: v for k, v in tensors.items() if k not in used}


def describe_outside(outside: dict[str, LazyTensor], why: str) -> dict[str, str]:
    """Group leftover tensor names by their first name part, for `Checkpoint.outside_reasons`."""
    groups: dict[str, str] = {}
    for k in outside:
        groups.setdefault(k.split(".")[0], why)
    return groups


def require_model_type(cfg: dict, where: Path) -> str:
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise MMMergeError(f"{where}/config.json: has no model_type")
    return model_type


@contextlib.contextmanager
def transformers_bars(show: bool):
    """transformers' own progress bars ("Loading weights") on or off for the block, restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not show:
            hf_logging.enable_progress_bar()
