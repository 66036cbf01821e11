"""transformers causal LMs (Llama, Mistral, Qwen2/3, Gemma, Phi-3 ... any `*ForCausalLM`).

Their own layout is the canonical one, so reading is selecting: the tensors the class holds form the
`language` component; anything else in the files is kept aside and reported. A tied `lm_head` is not
stored; `untie` makes it explicit when a merge needs both matrices.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import Checkpoint, Component
from ..io.atomic import atomic_output_dir
from ..io.reader import read_folder
from ..io.writer import write_safetensors
from .hf_common import auto_class_names, copy_side_files, describe_rest, leftovers, read_config, require_model_type, take_component

FORMAT = "transformers-causal-lm"
DESCRIPTION = "transformers causal LM folder (config.json with a *ForCausalLM architecture)"


def causal_lm_arch(cfg: dict) -> str | None:
    for arch in cfg.get("architectures") or []:
        if arch.endswith("ForCausalLM"):
            return arch
    return auto_class_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES").get(cfg.get("model_type"))


def detect(path: Path) -> bool:
    if not Path(path).is_dir():
        return False
    cfg = read_config(path)
    return bool(cfg) and "architecture" not in cfg and causal_lm_arch(cfg) is not None


def read(path: Path) -> Checkpoint:
    path = Path(path)
    cfg = read_config(path)
    require_model_type(cfg, path)
    arch = causal_lm_arch(cfg)
    tensors = read_folder(path)
    language, _ = take_component("language", arch, cfg, tensors, ("",), path)
    rest = leftovers(tensors, set(language.tensors))
    return Checkpoint(path, FORMAT, {"language": language}, describe_rest(rest, f"not held by {arch}"), rest,
                      {"config.json": cfg}, side_files=path)


def is_tied(component: Component) -> bool:
    return bool(component.config.get("tie_word_embeddings", False)) and "lm_head.weight" not in component.tensors


def untie(component: Component, embed_key: str = "model.embed_tokens.weight") -> Component:
    """The same component with `lm_head.weight` stored explicitly and `tie_word_embeddings` off."""
    if not is_tied(component):
        return component
    tensors = dict(component.tensors)
    tensors["lm_head.weight"] = tensors[embed_key]
    config = {**component.config, "tie_word_embeddings": False}
    return Component(component.name, component.arch, config, tensors, component.preprocess, component.extra)


def write_source(checkpoint: Checkpoint, out: Path, force: bool = False) -> None:
    """A transformers folder again: config, the language tensors plus the kept-aside ones, side files."""
    language = checkpoint.component("language")
    with atomic_output_dir(out, force) as tmp:
        (tmp / "config.json").write_text(json.dumps(checkpoint.source_config["config.json"], indent=2) + "\n")
        write_safetensors(tmp, {**language.tensors, **checkpoint.rest})
        if checkpoint.path.is_dir():
            copy_side_files(checkpoint.path, tmp)
