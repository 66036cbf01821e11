"""Where a peft module name lives in our components.

peft names modules as the model it wrapped names them. For a causal LM or a vision tower that is our
canonical name already (older CLIP saves add `vision_model.`). A LLaVA wrapped by peft uses the in-memory
names of the transformers version it was trained with: `model.language_model.*` / `lm_head` /
`model.vision_tower.*` / `model.multi_modal_projector.*` today, `language_model.model.*` /
`language_model.lm_head` / `vision_tower.vision_model.*` / `multi_modal_projector.*` before. Each rule
below rewrites a prefix; a module is found when the rewritten name's `.weight` is a tensor of the component.
"""

from __future__ import annotations

from ..adapters.hf_llava import FORMAT as LLAVA_FORMAT
from ..adapters.hf_llava import language_key_to_llava
from ..checkpoint import Checkpoint


def rules(ckpt: Checkpoint) -> list[tuple[str, str, str]]:
    """(peft name prefix, component, canonical prefix), most specific first."""
    if ckpt.format == LLAVA_FORMAT:
        base = ckpt.source_config.get("language_base", "model")
        return [
            ("model.language_model.", "language", f"{base}."),
            ("language_model.model.", "language", f"{base}."),
            ("language_model.lm_head.", "language", "lm_head."),
            ("lm_head.", "language", "lm_head."),
            ("language_model.", "language", ""),
            ("model.vision_tower.vision_model.", "vision", ""),
            ("model.vision_tower.", "vision", ""),
            ("vision_tower.vision_model.", "vision", ""),
            ("vision_tower.", "vision", ""),
            ("model.multi_modal_projector.", "projector", ""),
            ("multi_modal_projector.", "projector", ""),
        ]
    out = []
    for cname in ckpt.components:
        out += [("", cname, ""), ("vision_model.", cname, "")]
    return out


def locate(ckpt: Checkpoint, name: str, suffix: str = ".weight") -> tuple[str, str] | None:
    """(component, canonical tensor name) of peft parameter `name + suffix`, or None when the base lacks it."""
    for prefix, cname, canonical in rules(ckpt):
        if not name.startswith(prefix) or cname not in ckpt.components:
            continue
        tensor = canonical + name[len(prefix):] + suffix
        if tensor in ckpt.components[cname].tensors:
            return cname, tensor
    return None


def locate_tensor(ckpt: Checkpoint, name: str) -> tuple[str, str] | None:
    """(component, canonical name) of a whole peft parameter name such as `lm_head.weight`."""
    stem, _, last = name.rpartition(".")
    return locate(ckpt, stem, "." + last) if stem else None


def peft_name(ckpt: Checkpoint, cname: str, module: str) -> str:
    """The name peft gives the module `module` of component `cname` when it wraps the model at ckpt.path
    (the inverse of `locate`, for the in-memory names of the installed transformers)."""
    if ckpt.format != LLAVA_FORMAT:
        return module
    if cname == "language":
        return language_key_to_llava(module, "current", ckpt.source_config.get("language_base", "model"))
    return component_prefix(ckpt, cname) + module


def component_prefix(ckpt: Checkpoint, cname: str) -> str:
    """The peft-name prefix all of a component's modules share ('' when the component is the whole model)."""
    if ckpt.format != LLAVA_FORMAT:
        return ""
    return {"language": "model.language_model.", "vision": "model.vision_tower.",
            "projector": "model.multi_modal_projector."}[cname]
