"""Tensors outside every component of a multimodal output (another modality's tower, its embedder, buffers), in a
recipe with one method for the whole model: merged by that method, as mergekit merges every tensor of an
architecture, wherever every input model holds them under the same name (in memory: the files' layouts may differ)
with the same shape and dtype kind.

The others stay as the output's reference model holds them, and the plan notes which and why. A `components:`
recipe names a method per component only; its outside tensors belong to no section and stay the reference's.
"""

from __future__ import annotations

import dataclasses

from ..adapters import rename
from ..checkpoint import Checkpoint, Component
from ..methods import get_method
from .inputs import SectionInputs
from .opener import Opener
from .parameters import stack_positions
from .recipe import MergeSection, dtype_of
from .section import TensorPlanner, whole_model_slice
from .slices import Walked
from .tasks import TensorTask

CNAME = "outside"  # the seed of a random method's per-tensor stream is keyed by it


def in_memory(ck: Checkpoint) -> dict[str, str]:
    """The checkpoint's outside tensors by the name its class gives them in memory (name -> file name): files of
    two layouts (a hub checkpoint's `video_tower.vision_model.`, transformers 5's `video_tower.`) name one tensor
    differently, and it is the same tensor."""
    renames = ck.family.layout(ck.source_config.get("layout", "")) if ck.family is not None else ()
    return {rename(n, renames, to_memory=True): n for n in ck.outside}


def counterparts(ref: Checkpoint, ck: Checkpoint) -> dict[str, str]:
    """The reference's outside tensors that `ck` holds: reference file name -> `ck`'s file name."""
    if ck is ref:
        return {n: n for n in ref.outside}
    theirs = in_memory(ck)
    return {file: theirs[memory] for memory, file in in_memory(ref).items() if memory in theirs}


def why_not_merged(name: str, ref: Checkpoint, others: dict[str, tuple[Checkpoint, dict[str, str]]]) -> str | None:
    """Why the reference's outside tensor `name` cannot be merged across `others` (path -> the checkpoint and its
    `counterparts`), else None."""
    mine = ref.outside[name]
    for path, (ck, held) in others.items():
        theirs = ck.outside.get(held.get(name, ""))
        if theirs is None:
            return f"missing in {path}"
        if tuple(theirs.shape) != tuple(mine.shape):
            return f"shape {tuple(theirs.shape)} in {path}, {tuple(mine.shape)} in {ref.path}"
        if theirs.dtype.is_floating_point != mine.dtype.is_floating_point:
            return f"dtype {str(theirs.dtype).removeprefix('torch.')} in {path}"
    if not mine.dtype.is_floating_point:
        return f"not floating point ({str(mine.dtype).removeprefix('torch.')})"
    return None


def merge_outside(tasks: list[TensorTask], section: MergeSection, ref: Checkpoint, opener: Opener, *,
                  seed: int | None, notes: list[str]) -> tuple[list[TensorTask], set[str]]:
    """`tasks` with each copy of the reference's outside tensors that every input holds alike replaced by its merge
    (the copy's written dtype kept: the output's); returns them and the merged tensors' names. Notes the rest."""
    refs = section.input_models()
    ckpts = {r: opener(r) for r in refs}
    held = {r: counterparts(ref, ck) for r, ck in ckpts.items()}  # each input's names for them, found once
    others = {str(opener.path(r)): (ck, held[r]) for r, ck in ckpts.items() if ck is not ref}
    kept: dict[str, list[str]] = {}
    mergeable = []
    for name in ref.outside:
        why = why_not_merged(name, ref, others)
        if why is None:
            mergeable.append(name)
        else:
            kept.setdefault(why, []).append(name)
    if kept:
        notes.append(f"outside every component, not merged but copied from {ref.path}: "
                     + "; ".join(f"{shown(names, ref)} ({why})" for why, names in kept.items()))
    if not mergeable:
        return tasks, set()
    spec = get_method(section.merge_method)
    comps = {r: Component(name=CNAME, arch=ref.family.cls, config={},
                          tensors={n: ck.outside[held[r][n]] for n in mergeable})
             for r, ck in ckpts.items()}
    inputs = SectionInputs(ckpts=ckpts, paths={r: str(opener.path(r)) for r in refs}, comps=comps)
    planner = TensorPlanner(section, CNAME, spec, inputs, opener, dtype_of(section.dtype),
                            dtype_of(section.out_dtype), seed)
    sl = whole_model_slice(section, refs, 0)
    position = stack_positions(mergeable)  # gradients within each stack of numbered layers, as mergekit infers
    merged = {n: planner.task(Walked(n, {r: n for r in refs}, sl, CNAME, position[n])) for n in mergeable}
    out = [dataclasses.replace(merged[t.name], dtype=t.dtype) if t.name in merged else t for t in tasks]
    what = f"every other one ({len(mergeable)} tensors)" if kept else shown(mergeable, ref)
    notes.append(f"outside every component, merged by {spec.name}: {what}")
    return out, set(merged)


def shown(keys: list[str], ck: Checkpoint) -> str:
    """`keys` (tensor names or name prefixes outside `ck`'s components) for a note: the tensors that fill a module
    of `ck`'s outside tensors (`model.audio_tower.`) as `module.*`, a prefix as `prefix*`."""
    def module(n: str) -> str | None:
        parts = n.split(".")
        return ".".join(parts[:2]) + "." if len(parts) > 2 else None

    given = set(keys)
    whole = {m for k in keys if k in ck.outside and (m := module(k))
             and all(o in given for o in ck.outside if module(o) == m)}
    return ", ".join(dict.fromkeys(f"{module(k)}*" if module(k) in whole else k if k in ck.outside else f"{k}*"
                                   for k in keys))
