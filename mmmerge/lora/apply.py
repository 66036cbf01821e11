"""Apply a LoRA to an opened checkpoint lazily: each target weight becomes a LazyTensor computing
W + scale * B @ A (transposed for fan_in_fan_out / embeddings) when it is loaded.

So the engine streams an adapted model tensor by tensor exactly as it streams a plain one; the merged
weights equal peft's `merge_and_unload`. Every target is checked against the base's tensor names and
shapes first, so a wrong base fails before any data is read.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from ..checkpoint import Checkpoint, Component, LazyTensor
from ..errors import ShapeMismatchError
from . import converted
from .adapter import AdapterMismatchError, LoraAdapter, LoraModule, read_adapter
from .targets import file_tensor, locate, locate_tensor


def _adapted(w: LazyTensor, module: LoraModule) -> LazyTensor:
    def load():
        return (w.load().float() + module.delta()).to(w.dtype)

    return LazyTensor(w.shape, w.dtype, load)


def _with_bias(b: LazyTensor, module: LoraModule) -> LazyTensor:
    def load():
        return (b.load().float() + module.bias.load().float() * module.scale).to(b.dtype)

    return LazyTensor(b.shape, b.dtype, load)


def _missing(adapter: LoraAdapter, ckpt: Checkpoint, what: str) -> AdapterMismatchError:
    return AdapterMismatchError(f"{adapter.file}: target module {what} is not in {ckpt.path} "
                                f"(base_model_name_or_path: {adapter.config.get('base_model_name_or_path')}); "
                                f"is this the adapter's base model?")


def apply_lora(ckpt: Checkpoint, adapter: LoraAdapter) -> Checkpoint:
    """A new Checkpoint whose adapted tensors compute the merged weights on load; `ckpt` is unchanged."""
    tensors = {c: dict(comp.tensors) for c, comp in ckpt.components.items()}
    # Whole tensors first (a saved embedding layer is the base layer the LoRA update is added to).
    for name, t in adapter.whole.items():
        found = locate_tensor(ckpt, name)
        if found is None:
            raise _missing(adapter, ckpt, name)
        cname, tname = found
        if tuple(tensors[cname][tname].shape) != tuple(t.shape):
            raise ShapeMismatchError(f"{adapter.file}: tensor {name} has shape {tuple(t.shape)} but {cname} tensor "
                                     f"{tname} of {ckpt.path} has shape {tuple(tensors[cname][tname].shape)}")
        tensors[cname][tname] = _cast(t, tensors[cname][tname].dtype)
    unfound = {}
    for name, module in adapter.modules.items():
        found = locate(ckpt, name)
        if found is None:
            unfound[name] = module
            continue
        cname, tname = found
        w = tensors[cname][tname]
        if tuple(w.shape) != module.weight_shape:
            hint = " (fan_in_fan_out?)" if tuple(w.shape) == module.weight_shape[::-1] else ""
            raise ShapeMismatchError(f"{adapter.file}: module {name}: the LoRA update has shape {module.weight_shape}"
                                     f" but {cname} tensor {tname} of {ckpt.path} has shape {tuple(w.shape)}{hint}")
        tensors[cname][tname] = _adapted(w, module)
        if module.bias is not None:
            bname = tname[: -len("weight")] + "bias"
            if bname not in tensors[cname] or tensors[cname][bname].shape != module.bias.shape:
                raise ShapeMismatchError(f"{adapter.file}: module {name}: lora_B.bias needs a bias of shape "
                                         f"{tuple(module.bias.shape)} in the base; {cname} tensor {bname} does not fit")
            tensors[cname][bname] = _with_bias(tensors[cname][bname], module)
    if unfound:
        _apply_converted(ckpt, adapter, tensors, unfound)
    comps = {c: dataclasses.replace(comp, tensors=tensors[c]) for c, comp in ckpt.components.items()}
    return dataclasses.replace(ckpt, components=comps)


def _apply_converted(ckpt: Checkpoint, adapter: LoraAdapter, tensors: dict[str, dict[str, LazyTensor]],
                     modules: dict[str, LoraModule]) -> None:
    """Modules that name no file tensor because transformers converts them when it saves (q/k/v held apart, written
    fused): each group's updates are written as transformers writes the group (converted.py)."""
    key = converted.class_of(ckpt)
    groups = converted.converted_groups(*key) if key else {}
    updates = {}  # in-memory tensor name -> its update
    for name, module in modules.items():
        weight = groups.get(name + ".weight")
        if weight is None:
            raise _missing(adapter, ckpt, name)
        if tuple(weight["memory"][name + ".weight"]) != module.weight_shape:
            raise ShapeMismatchError(f"{adapter.file}: module {name}: the LoRA update has shape {module.weight_shape}"
                                     f" but {key[0]} holds "
                                     f"{name}.weight with shape {tuple(weight['memory'][name + '.weight'])}")
        updates[name + ".weight"] = module.delta
        if module.bias is not None:
            _add_bias(ckpt, adapter, tensors, groups, updates, name, module)
    done = set()
    for name in updates:
        group = groups[name]
        if tuple(group["memory"]) in done:  # each member holds its group (a copy, once kept on disk)
            continue
        done.add(tuple(group["memory"]))
        members = {m: updates[m] for m in group["memory"] if m in updates}
        for file, update in converted.file_updates(*key, group, members).items():
            found = file_tensor(ckpt, file)
            if found is None or tuple(tensors[found[0]][found[1]].shape) != tuple(group["file"][file]):
                raise _missing(adapter, ckpt, f"{', '.join(m.removesuffix('.weight') for m in members)} (written "
                                              f"as {file})")
            cname, tname = found
            tensors[cname][tname] = converted.adapted(tensors[cname][tname], update)


def _add_bias(ckpt, adapter, tensors, groups, updates, name, module) -> None:
    """lora_B.bias of a converted module: its bias is renamed only (added as it is) or converted with its group."""
    scaled = functools.partial(lambda b, s: b.load().float() * s, module.bias, module.scale)
    found = locate(ckpt, name, ".bias")
    if found is not None and tuple(tensors[found[0]][found[1]].shape) == tuple(module.bias.shape):
        tensors[found[0]][found[1]] = converted.adapted(tensors[found[0]][found[1]], scaled)
    elif groups.get(name + ".bias") and tuple(groups[name + ".bias"]["memory"][name + ".bias"]) == tuple(
            module.bias.shape):
        updates[name + ".bias"] = scaled
    else:
        raise ShapeMismatchError(f"{adapter.file}: module {name}: lora_B.bias needs a bias of shape "
                                 f"{tuple(module.bias.shape)} in the base; {ckpt.path} has none that fits")


def _cast(t: LazyTensor, dtype: torch.dtype) -> LazyTensor:
    return t if t.dtype == dtype else LazyTensor(t.shape, dtype, lambda: t.load().to(dtype))


def open_with_lora(base: Path, lora: Path) -> Checkpoint:
    """Open `base` (any supported format) and apply the peft LoRA folder `lora` to it. A causal LM whose experts
    are read fused takes a LoRA of per-expert modules (transformers 4's Mixtral `experts.0.w1`) on its per-expert file
    tensors, fused afterwards."""
    from ..adapters import hf_causal_lm, open_checkpoint
    from ..adapters.fused_experts import in_memory_layout

    ckpt, adapter = open_checkpoint(base), read_adapter(lora)
    if ckpt.format != hf_causal_lm.FORMAT or all(locate(ckpt, name) is not None for name in adapter.modules):
        return apply_lora(ckpt, adapter)
    adapted = apply_lora(hf_causal_lm.read(base, fused=False), adapter)
    language = in_memory_layout(adapted.component("language"))
    return dataclasses.replace(adapted, components={**adapted.components, "language": language})
