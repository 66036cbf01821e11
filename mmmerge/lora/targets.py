"""Where a peft module name lives in our components.

peft names modules as the model it wrapped names them. For a causal LM or a vision tower that is our
canonical name already (older CLIP saves add `vision_model.`). A multimodal model wrapped by peft uses the
in-memory names of the transformers version it was trained with: today's (`model.language_model.*`,
`lm_head`, `model.vision_tower.*`, `model.visual.*`, ...) or, before transformers 5, the names its files
hold (`language_model.model.*`, `vision_tower.vision_model.*`, `visual.*`, ...). The family table knows
both: a name is renamed from each of the family's layouts to the in-memory name, which the table splits into
(component, canonical name); a module is found when that `.weight` is a tensor of the component. Canonical names
are file names: a tensor transformers renames inside its part when it saves is found by its saved name. A model read
whole keeps its file names; transformers' own renaming on load maps them to peft's.
"""

from __future__ import annotations

from ..adapters.families import join_name, rename, split_name
from ..adapters.hf_multimodal import saved_name
from ..adapters.hf_whole import COMPONENT, memory_names
from ..checkpoint import Checkpoint


def locate(ckpt: Checkpoint, name: str, suffix: str = ".weight") -> tuple[str, str] | None:
    """(component, canonical tensor name) of peft parameter `name + suffix`, or None when the base lacks it."""
    family = ckpt.family
    if ckpt.whole is not None:  # file names, which transformers may rename on load: peft names the loaded model's
        file = {m: f for f, m in memory_names(ckpt).items()}.get(name + suffix, name + suffix)
        return (COMPONENT, file) if file in ckpt.component(COMPONENT).tensors else None
    if family is None:
        for cname in ckpt.components:
            for prefix in ("", "vision_model."):
                if name.startswith(prefix) and name[len(prefix):] + suffix in ckpt.components[cname].tensors:
                    return cname, name[len(prefix):] + suffix
        return None
    for layout in ((), *family.layouts.values()):
        where = split_name(family, rename(name + suffix, layout, to_memory=True))
        if where is not None and where[0] in ckpt.components and where[1] in ckpt.components[where[0]].tensors:
            return where
    file = saved_name(ckpt, name + suffix)  # renamed inside its part when saved: the row's name of its file name
    return file and file_tensor(ckpt, file)


def file_tensor(ckpt: Checkpoint, file: str) -> tuple[str, str] | None:
    """(component, canonical name) of the tensor a file written by transformers' save path names `file`, or None
    when the checkpoint holds no such tensor (or is not a multimodal family)."""
    if ckpt.family is None:
        return None
    where = split_name(ckpt.family, rename(file, ckpt.family.layout("saved"), to_memory=True))
    if where and where[0] in ckpt.components and where[1] in ckpt.components[where[0]].tensors:
        return where
    return None


def locate_tensor(ckpt: Checkpoint, name: str) -> tuple[str, str] | None:
    """(component, canonical name) of a whole peft parameter name such as `lm_head.weight`."""
    stem, _, last = name.rpartition(".")
    return locate(ckpt, stem, "." + last) if stem else None


def peft_name(ckpt: Checkpoint, cname: str, module: str) -> str:
    """The name peft gives the module `module` of component `cname` when it wraps the model at ckpt.path
    (the inverse of `locate`, for the in-memory names of the installed transformers)."""
    if ckpt.family is None:
        return module
    return join_name(ckpt.family, cname, module + ".weight", owned=False).removesuffix(".weight")


def component_prefix(ckpt: Checkpoint, cname: str) -> str:
    """The peft-name prefix of the component's main part ('' when the component is the whole model)."""
    if ckpt.family is None:
        return ""
    return next(prefix for c, prefix, _ in ckpt.family.parts if c == cname)
