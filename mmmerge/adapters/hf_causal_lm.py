"""transformers causal LMs (Llama, Mistral, Qwen2/3, Gemma, Phi-3 ... any `*ForCausalLM`).

Their own layout is the canonical one, so reading is selecting: the tensors the class holds form the
`language` component; anything else in the files is kept aside and reported. A tied `lm_head` is not
stored; `untie` makes it explicit when a merge needs both matrices. Experts that transformers saves one tensor
per expert and holds fused (Qwen3-MoE, Mixtral) are read fused, as the class holds them (`fused_experts.py`).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint, Component
from ..io.folder import write_model_folder
from ..io.reader import read_folder
from .fused_experts import in_memory_layout
from .hf_whole import has_vision_tower
from .hf_common import auto_class_names, describe_outside, leftovers, read_config, require_model_type, take_component

FORMAT = "transformers-causal-lm"
DESCRIPTION = "transformers causal LM folder (config.json with a *ForCausalLM architecture)"


def causal_lm_arch(cfg: dict) -> str | None:
    """The causal LM class the folder was saved from (or, where it names none, its type's); None where it names
    another class: a base model (LlamaModel), an encoder-decoder (Whisper, BART: their causal LM is the decoder
    alone), a classifier, an image-text-to-text class (transformers maps emu3 to Emu3ForCausalLM too, the text
    model alone). Those hold other tensors, and merge whole."""
    registered = auto_class_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES").get(cfg.get("model_type"))
    named = [arch for arch in cfg.get("architectures") or [] if isinstance(arch, str)]
    for arch in named:
        if arch.endswith("ForCausalLM") or arch == registered:
            return arch
    return None if named else registered


def detect(path: Path) -> bool:
    if not Path(path).is_dir():
        return False
    cfg = read_config(path)
    return bool(cfg) and "architecture" not in cfg and causal_lm_arch(cfg) is not None and not has_vision_tower(cfg)


def read(path: Path, *, fused: bool = True) -> Checkpoint:
    """`fused=False`: experts under their file names, one tensor per expert (a LoRA of per-expert modules)."""
    path = Path(path)
    cfg = read_config(path)
    require_model_type(cfg, path)
    arch = causal_lm_arch(cfg)
    tensors = read_folder(path)
    language, _ = take_component("language", arch, cfg, tensors, ("",), path)
    outside = leftovers(tensors, set(language.tensors))
    if fused:
        language = in_memory_layout(language)
    return Checkpoint(path, FORMAT, {"language": language}, describe_outside(outside, f"not held by {arch}"), outside,
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
    write_model_folder(out, {**language.tensors, **checkpoint.outside}, checkpoint.source_config["config.json"],
                       force=force, side_files=checkpoint.path)
