"""transformers LLaVA checkpoints, split into vision, projector and language components.

Two key layouts exist. The in-memory ("current") one: `model.vision_tower.*`,
`model.multi_modal_projector.*`, `model.language_model.*` (the bare decoder), `lm_head.*`. The "legacy"
one that hub checkpoints and `save_pretrained` use: `vision_tower.*` (hub files: `vision_tower.vision_model.*`),
`multi_modal_projector.*`, `language_model.model.*`, `language_model.lm_head.*`. Both are read; a
checkpoint is written back in the layout it came in. The language component is named as the matching
`*ForCausalLM`, so it merges with a text-only LLM of the same base.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import Checkpoint, Component, LazyTensor
from ..errors import UnreadableFileError, UnsupportedArchitectureError
from ..io.atomic import atomic_output_dir
from ..io.reader import read_folder
from ..io.writer import write_safetensors
from .hf_common import auto_class_names, base_model_prefix, copy_side_files, describe_rest, read_config, take_component

FORMAT = "transformers-llava"
DESCRIPTION = "transformers LLaVA folder (config.json with model_type 'llava')"
PROJECTOR_ARCH = "LlavaMultiModalProjector"


def detect(path: Path) -> bool:
    if not Path(path).is_dir():
        return False
    cfg = read_config(path)
    return bool(cfg) and cfg.get("model_type") == "llava"


def sub_config(cfg: dict, key: str, where: Path) -> dict:
    sub = cfg.get(key)
    if not isinstance(sub, dict) or "model_type" not in sub:
        raise UnreadableFileError(f"{where}/config.json: {key} is missing or has no model_type")
    return dict(sub)


def language_arch(text_cfg: dict, where: Path) -> str:
    arch = auto_class_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES").get(text_cfg["model_type"])
    if arch is None:
        raise UnsupportedArchitectureError(f"{where}: text model type {text_cfg['model_type']} has no causal LM class")
    return arch


def language_key_to_llava(key: str, layout: str, language_base: str) -> str:
    """A *ForCausalLM key as it is stored in a LLaVA file."""
    if layout == "current":
        head = f"{language_base}."
        return "model.language_model." + key[len(head):] if key.startswith(head) else key
    return "language_model." + key


def projector_config(cfg: dict, vision_cfg: dict, text_cfg: dict) -> dict:
    return {
        "projector_hidden_act": cfg.get("projector_hidden_act", "gelu"),
        "multimodal_projector_bias": cfg.get("multimodal_projector_bias", True),
        "vision_feature_layer": cfg.get("vision_feature_layer", -2),
        "vision_feature_select_strategy": cfg.get("vision_feature_select_strategy", "default"),
        "vision_hidden_size": vision_cfg.get("hidden_size"),
        "text_hidden_size": text_cfg.get("hidden_size"),
    }


def detect_layout(tensors: dict[str, LazyTensor]) -> tuple[str, str]:
    """('current' | 'legacy', the legacy vision prefix)."""
    if any(k.startswith("model.language_model.") or k.startswith("model.vision_tower.") for k in tensors):
        return "current", ""
    if any(k.startswith("vision_tower.vision_model.") for k in tensors):
        return "legacy", "vision_tower.vision_model."
    return "legacy", "vision_tower."


def read(path: Path) -> Checkpoint:
    path = Path(path)
    cfg = read_config(path)
    vision_cfg, text_cfg = sub_config(cfg, "vision_config", path), sub_config(cfg, "text_config", path)
    tensors = read_folder(path)
    layout, legacy_vision = detect_layout(tensors)
    lang_arch = language_arch(text_cfg, path)
    base = base_model_prefix(lang_arch)
    vision_prefix = "model.vision_tower." if layout == "current" else legacy_vision
    proj_prefix = "model.multi_modal_projector." if layout == "current" else "multi_modal_projector."

    vision_arch = auto_class_names("MODEL_MAPPING_NAMES")[vision_cfg["model_type"]]
    vision, _ = take_component("vision", vision_arch, vision_cfg, tensors,
                               (vision_prefix,), path)
    projector = Component("projector", PROJECTOR_ARCH, projector_config(cfg, vision_cfg, text_cfg),
                          {k[len(proj_prefix):]: v for k, v in tensors.items() if k.startswith(proj_prefix)})
    if "linear_1.weight" not in projector.tensors:
        raise UnreadableFileError(f"{path}: tensor {proj_prefix}linear_1.weight is missing (LLaVA projector)")
    # The language tensors, renamed from the LLaVA layout to *ForCausalLM keys.
    stored = {}
    for k, v in tensors.items():
        if layout == "current" and k.startswith("model.language_model."):
            stored[f"{base}." + k[len("model.language_model."):]] = v
        elif layout == "current" and k.startswith("lm_head."):
            stored[k] = v
        elif layout == "legacy" and k.startswith("language_model."):
            stored[k[len("language_model."):]] = v
    language, _ = take_component("language", lang_arch, text_cfg, stored, ("",), path)

    used = {vision_prefix + k for k in vision.tensors} | {proj_prefix + k for k in projector.tensors}
    used |= {language_key_to_llava(k, layout, base) for k in language.tensors}
    rest = {k: v for k, v in tensors.items() if k not in used}
    source = {"config.json": cfg, "layout": layout, "vision_prefix": vision_prefix, "language_base": base}
    components = {"vision": vision, "projector": projector, "language": language}
    return Checkpoint(path, FORMAT, components, describe_rest(rest, "not held by LlavaForConditionalGeneration"),
                      rest, source)


def llava_tensors(components: dict[str, Component], layout: str = "current", vision_prefix: str | None = None,
                  language_base: str | None = None) -> dict[str, LazyTensor]:
    """All tensors of a LLaVA checkpoint, named in `layout`, from its three components."""
    language = components["language"]
    base = language_base or base_model_prefix(language.arch)
    if vision_prefix is None:
        vision_prefix = "model.vision_tower." if layout == "current" else "vision_tower."
    proj_prefix = "model.multi_modal_projector." if layout == "current" else "multi_modal_projector."
    out = {vision_prefix + k: v for k, v in components["vision"].tensors.items() if k not in components["vision"].extra}
    out.update({proj_prefix + k: v for k, v in components["projector"].tensors.items()})
    out.update({language_key_to_llava(k, layout, base): v for k, v in language.tensors.items()})
    return out


def write_source(checkpoint: Checkpoint, out: Path, force: bool = False) -> None:
    """The LLaVA folder again, in the layout it was read in, with its side files (tokenizer, processor)."""
    src = checkpoint.source_config
    tensors = llava_tensors(checkpoint.components, src["layout"], src["vision_prefix"], src["language_base"])
    with atomic_output_dir(out, force) as tmp:
        (tmp / "config.json").write_text(json.dumps(src["config.json"], indent=2) + "\n")
        write_safetensors(tmp, {**tensors, **checkpoint.rest})
        if checkpoint.path.is_dir():
            copy_side_files(checkpoint.path, tmp)
