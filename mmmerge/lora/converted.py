"""LoRA targets that transformers converts between memory and file.

peft names the modules of the model in memory. Some of them are held apart in memory and written fused (a vision
tower's q/k/v saved as one qkv, Kimi-K2.5's with a rope permutation), or the reverse. A module of such a group names
no file tensor, so its update is written the way transformers writes the group: the in-memory updates of the group
(zeros for the members the adapter leaves alone) go through transformers' own save-time conversion, and each file
tensor adds its share. Which memory tensors make which file tensors is asked of the class at run time (its
conversion mapping, reversed as `save_pretrained` reverses it), never written per family. The conversion operations
(chunk, concatenate, permute, transpose) only move values, so adding the moved update equals peft's
`merge_and_unload` followed by a save.
"""

from __future__ import annotations

import functools
import json
import threading
from typing import Callable

import torch

from ..adapters.hf_common import _kept_on_disk
from ..checkpoint import Checkpoint, LazyTensor


def _meta_model(arch: str, config_json: str):
    """The class on the meta device, built once with the other conversion facts asked of it."""
    from ..adapters.fused_experts import class_conversions

    return class_conversions(arch, config_json)[0]


@functools.lru_cache(maxsize=8)
def converted_groups(arch: str, config_json: str) -> dict[str, dict]:
    """In-memory name -> its group {"memory": {name: shape}, "file": {name: shape}}, for every tensor of the class
    that transformers converts (not only renames) when it saves: the memory tensors written together and the file
    tensors they become."""

    def compute() -> dict:
        from ..adapters.hf_export import to_file_names

        model = _meta_model(arch, config_json)
        state = model.state_dict()
        written_by: dict[str, set[str]] = {}
        for name, tensor in state.items():
            try:
                written = to_file_names(model, {name: tensor})
            except Exception:  # noqa: BLE001  (a converter that needs its whole group: found with the group below)
                continue
            if not (len(written) == 1 and next(iter(written.values())) is tensor):  # converted, not renamed only
                written_by[name] = set(written)
        groups: list[set[str]] = []
        for name in written_by:  # memory tensors sharing a file tensor are converted together
            joined = [g for g in groups if any(written_by[m] & written_by[name] for m in g)]
            groups = [g for g in groups if g not in joined] + [set().union({name}, *joined)]
        out = {}
        for members in groups:
            try:
                files = to_file_names(model, {m: state[m] for m in members})
            except Exception:  # noqa: BLE001  (a conversion transformers cannot revert: its targets stay unmapped)
                continue
            group = {"memory": {m: list(state[m].shape) for m in sorted(members)},
                     "file": {f: list(t.shape) for f, t in files.items()}}
            out.update(dict.fromkeys(members, group))
        return out

    return _kept_on_disk("converted-groups", f"{arch}\n{config_json}", compute)


def class_of(ckpt: Checkpoint) -> tuple[str, str] | None:
    """(transformers class, its config as JSON) of the multimodal model peft wrapped; None for other formats and
    models read whole (none of whose tiny types converts a Linear layer's weight)."""
    config = ckpt.source_config.get("config.json")
    if ckpt.family is None or config is None:
        return None
    return ckpt.family.cls, json.dumps(config, sort_keys=True, default=str)


def file_updates(arch: str, config_json: str, group: dict,
                 updates: dict[str, Callable[[], torch.Tensor]]) -> dict[str, Callable[[], torch.Tensor]]:
    """File name -> its float32 update, for the file tensors of `group`, from the in-memory updates of its members
    (name -> the update in the member's own layout). The group's conversion runs once per use, on first demand."""
    pending: dict[str, torch.Tensor] = {}
    lock = threading.Lock()  # the executor may load a group's file tensors from several threads

    def convert() -> dict[str, torch.Tensor]:
        from ..adapters.hf_export import to_file_names

        state = {m: updates[m]().float() if m in updates else torch.zeros(shape)
                 for m, shape in group["memory"].items()}
        return to_file_names(_meta_model(arch, config_json), state)

    def take(file: str) -> torch.Tensor:
        with lock:
            if file not in pending:  # each file tensor takes its share once; a second load converts again
                pending.update(convert())
            return pending.pop(file)

    return {f: functools.partial(take, f) for f in group["file"]}


def adapted(w: LazyTensor, update: Callable[[], torch.Tensor]) -> LazyTensor:
    """`w` plus `update`, computed in float32 and cast back, on load."""
    return LazyTensor(w.shape, w.dtype, lambda: (w.load().float() + update()).to(w.dtype))
