"""Apply a LoRA to an opened checkpoint lazily: each target weight becomes a LazyTensor computing
W + scale * B @ A (transposed for fan_in_fan_out / embeddings) when it is loaded.

So the engine streams an adapted model tensor by tensor exactly as it streams a plain one; the merged
weights equal peft's `merge_and_unload`. Every target is checked against the base's tensor names and
shapes first, so a wrong base fails before any data is read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..checkpoint import Checkpoint, Component, LazyTensor
from ..errors import ShapeMismatchError
from .adapter import AdapterMismatchError, LoraAdapter, LoraModule, read_adapter
from .targets import locate, locate_tensor


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
    for name, module in adapter.modules.items():
        found = locate(ckpt, name)
        if found is None:
            raise _missing(adapter, ckpt, name)
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
    comps = {c: dataclasses.replace(comp, tensors=tensors[c]) for c, comp in ckpt.components.items()}
    return dataclasses.replace(ckpt, components=comps)


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
