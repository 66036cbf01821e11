"""Recipe -> plan: one task per output tensor, everything validated before any tensor data is read.

Validation covers: model paths open and have a known architecture; every merged component has the same
tensor names, shapes and architecture in every input (a tensor in only some inputs is an error, never
dropped); the method takes the inputs given; every parameter resolves to a valid value for every
tensor. Only headers are read (shapes and dtypes); tensor data is read by the executor, one task at a time.

Each merge section is planned tensor by tensor in engine/section.py (a `models:` section as one slice of every
layer, as mergekit plans it); this module puts the components together into the output's layout.
In a model merged whole, gradients run within each stack of numbered layers, as mergekit infers them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapters import (family_file_layout, family_file_tensors, family_named, hf_config_dict, in_memory_layout,
                        image_processor_config, missing_from_class, text_config_of, untie, vocabulary_tensors,
                        WHOLE_COMPONENT as WHOLE)
from ..checkpoint import COMPONENTS, Checkpoint, Component
from ..errors import RecipeError
from ..io.check import check_tensors
from .opener import Opener
from .outside import merge_outside, shown
from .section import plan_merge_section, same_layout
from .tasks import ComponentPlan, SharedStream, TensorTask, planned, written_dtype
from .recipe import MergeSection, Recipe, SourceSection, dtype_of, ignored_keys, load_recipe


@dataclass(kw_only=True)
class Plan:
    """A merge planned before any tensor data is read (built with keywords: it has many fields)."""

    recipe: Recipe
    components: dict[str, ComponentPlan]
    output_format: str  # "hf" | a family's model_type ("llava", "qwen2_5_vl", ...)
    config: dict  # the output config.json
    side_files_from: Path | None  # folder whose tokenizer/processor files are copied
    tasks: list[TensorTask]  # in output order, names as written
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # likely mistakes that do not stop the merge (misspelt keys)
    tokenizer: Any = None  # engine.tokenizer.TokenizerPlan: the output's tokenizer, when the recipe builds one
    preprocessor: dict | None = None  # preprocessor_config.json to write (vision output from a non-HF source)
    inputs: list[Path] = field(default_factory=list)  # every checkpoint the plan reads

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tasks)

    @property
    def data(self) -> list[Path]:
        """Every file the plan reads besides its input models (the statistics files of regmean and fisher): an
        output may not replace them either."""
        from ..methods._statistics import reads_statistics

        found = {p["statistics"] for t in self.tasks if t.method is not None and reads_statistics(t.method)
                 for p in t.params if p.get("statistics") is not None}
        return [Path(f) for f in sorted(found)]

    def summary(self) -> str:
        lines = [f"output: {self.output_format}, {len(self.tasks)} tensors, {self.nbytes / 2**20:,.1f} MiB"]
        for c in self.components.values():
            dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in c.tasks.values()})
            lines.append(f"  {c.name}: {c.how} of {len(c.sources)} input(s) -> {c.component.arch}, "
                         f"{len(c.tasks)} tensors ({', '.join(dtypes)})")
            for i, s in enumerate(c.sources):
                given = c.written[i] if i < len(c.written) else None
                shown = f"  {_compact(given)}" if given else ""
                lines.append(f"    {'base: ' if i == 0 and c.has_base else ''}{s}{shown}")
            if c.tasks and c.how != "copy":
                first = next(iter(c.tasks.values()))
                if first.global_params:
                    lines.append(f"    global parameters (first tensor): {_compact(first.global_params)}")
        for n in self.notes:
            lines.append(f"note: {n}")

        return "\n".join(lines)


def _compact(params: dict) -> str:
    def show(v):
        if hasattr(v, "model_dump"):
            v = v.model_dump(exclude_none=True)
        if isinstance(v, list):
            return "[" + ", ".join(show(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {show(x)}" for k, x in v.items()) + "}"
        return f"{v:g}" if isinstance(v, float) else str(v)

    return show(dict(params))


def plan_copy(ckpt: Checkpoint, path: Path, cname: str, *, dtype=None, out_dtype=None) -> ComponentPlan:
    comp = ckpt.component(cname)
    tasks = {n: TensorTask(name=n, shape=tuple(t.shape), dtype=written_dtype([t], dtype, out_dtype), tensors=[t])
             for n, t in comp.tensors.items()}
    return ComponentPlan(name=cname, how="copy", sources=[str(path)],
                         component=planned(comp, cname, copy.deepcopy(comp.config), tasks), tasks=tasks, reference=ckpt)


def _set_dtype(cfg: dict, dtype: torch.dtype | None) -> None:
    if dtype is None:
        return
    name = str(dtype).removeprefix("torch.")
    cfg["dtype"] = name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = name


def _uniform_dtype(tasks: list[TensorTask]) -> torch.dtype | None:
    floats = {t.dtype for t in tasks if t.dtype.is_floating_point}
    return floats.pop() if len(floats) == 1 else None


def _hf_output(cp: ComponentPlan, notes: list[str]) -> tuple[dict, list[TensorTask], Path | None, dict | None]:
    comp = cp.component
    if not cp.tasks:  # a family's empty projector (inkling_mm_model: its vision tower writes the language width)
        raise RecipeError(f"components.{cp.name}: {', '.join(cp.sources)} holds no {cp.name} tensors: nothing to "
                          "write as a folder of its own")
    own = cp.reference.source_config.get("config.json") if cp.reference.family is None else None
    if cp.name == "language" and own and own.get("model_type") == comp.config.get("model_type"):
        cfg = copy.deepcopy(own)  # a causal LM's own config.json, as it was
    else:
        cfg = hf_config_dict(comp)
    cfg.update(cp.config_updates)
    if cp.name == "language" and "vocab_size" in comp.config:
        cfg["vocab_size"] = comp.config["vocab_size"]  # grown when some inputs have extra rows
    if cp.name == "language" and "lm_head.weight" in cp.tasks:
        _untie_config(cfg)
    tasks = []
    for n, t in cp.tasks.items():
        if n in comp.extra:
            notes.append(f"{cp.name}: tensor {n} is not held by {comp.arch} and is not written")
            continue
        tasks.append(t)
    missing = missing_from_class(comp)
    if missing:  # e.g. Qwen-VL's vision class also holds the projector (`merger`)
        raise RecipeError(f"{cp.name}: the {comp.arch} class also holds tensor {missing[0]} ({len(missing)} such), "
                          f"which the {cp.name} component does not; write the whole model in its family's format "
                          f"(a `components:` recipe with all three components and output: {{format: family}})")
    side = cp.reference.side_files
    pre = None
    if comp.preprocess and side is None:
        pre = image_processor_config(comp.preprocess)
    return cfg, tasks, side, pre


def plan_whole(section: MergeSection, ckpts: list[Checkpoint], opener: Opener, **kw) -> ComponentPlan:
    """A merge of whole models (adapters/hf_whole.py): every input must be one, and the plan merges every tensor."""
    whole = next(ck for ck in ckpts if ck.whole)
    split = next((ck for ck in ckpts if not ck.whole), None)
    if split is not None:
        raise RecipeError(f"{split.path} ({split.format}) is read as components ({', '.join(split.components)}) but "
                          f"{whole.path} merges only whole ({whole.whole}); merge whole models only with whole "
                          f"models of the same architecture")
    if section.slices is not None:
        raise RecipeError(f"slices: {whole.path} merges whole ({whole.whole}), with no language model whose "
                          f"layers the ranges name; use `models:`")
    return plan_merge_section(section, WHOLE, opener, **kw)


def _whole_output(cp: ComponentPlan) -> tuple[dict, list[TensorTask], Path | None]:
    """A whole model's output: the base's (the first input's) config.json and side files, every tensor merged
    under its own name; a new vocabulary's size wherever the config gave the old one."""
    cfg = copy.deepcopy(cp.reference.source_config["config.json"])
    if "vocab_size" in cp.config_updates:
        tensors = cp.reference.component(WHOLE).tensors
        _replace_vocab_size(cfg, tensors[vocabulary_tensors(cp.reference)[0]].shape[0], cp.config_updates["vocab_size"])
    return cfg, list(cp.tasks.values()), cp.reference.side_files


def _replace_vocab_size(cfg: dict, old: int, new: int) -> None:
    for key, value in cfg.items():
        if key == "vocab_size" and value == old:
            cfg[key] = new
        elif isinstance(value, dict):
            _replace_vocab_size(value, old, new)


def _untie_config(cfg: dict) -> None:
    """lm_head is stored and may differ from the embeddings: the config (and a LLaVA's text config) says so."""
    for c in (cfg, cfg.get("text_config") or {}):
        if c.get("tie_word_embeddings"):
            c["tie_word_embeddings"] = False


def family_reference(components: dict[str, ComponentPlan], opener: Opener, fmt: str) -> Checkpoint:
    """The multimodal checkpoint whose config, layout and processor the output takes: the first input of the
    family `fmt` names, or, for `family`, the first input that holds all three components (the projector's
    source first (where the recipe names one), then the language model's, then the vision tower's, then any other
    input)."""
    order = [components[c].reference for c in ("projector", "language", "vision") if c in components]
    order += list(opener.cache.values())
    found = next((ck for ck in order if ck.family is not None and fmt in ("family", ck.family.model_type)), None)
    if found is None:
        what = "multimodal checkpoint" if fmt == "family" else f"{fmt} checkpoint"
        hint = "; build a new LLaVA with `mmmerge stitch`" if fmt in ("family", "llava") else ""
        raise RecipeError(f"output format {fmt}: no {what} among the inputs to take its config and processor "
                          f"from{hint}")
    return found


def _family_output(components: dict[str, ComponentPlan], opener: Opener, fmt: str
                   ) -> tuple[dict, list[TensorTask], Checkpoint, str]:
    """The output in a family's layout: the reference's config, the components' tasks under its names, and the
    tensors outside every component as the reference holds them (a plain recipe merges them: engine/outside.py)."""
    ref = family_reference(components, opener, fmt)
    no_projector(ref, components, fmt)
    for cname, cp in components.items():
        if cp.config_updates:  # a new layer count: checked against the class built from the new config below
            continue
        own = ref.components[cname]
        if cname == "language" and set(own.tensors) != set(cp.tasks):
            own = in_memory_layout(own)  # experts merged fused beside a text-only LM (engine/inputs.py)
        if cname == "language" and "lm_head.weight" in cp.tasks:
            own = untie(own)  # an untied output of a tied model: the config is changed below
        same_layout(f"the {ref.family.model_type} config of {ref.path}", own, f"the {cp.how} output",
                     cp.component, cname)
    cfg = copy.deepcopy(ref.source_config["config.json"])
    text_config_of(ref.family, cfg).update(components["language"].config_updates)
    if "lm_head.weight" in components["language"].tasks:
        _untie_config(cfg)
    comps = {n: Component(n, c.component.arch, c.component.config, dict(c.tasks), extra=c.component.extra)
             for n, c in components.items()}
    tasks = []
    for out_name, task in family_file_tensors(ref.family, comps, ref.source_config["layout"]).items():
        tasks.append(task.renamed(out_name))
    if any(cp.config_updates for cp in components.values()):
        _check_class_layout(ref, cfg, tasks)
    dtype = _uniform_dtype(tasks)
    for out_name, tensor in ref.outside.items():  # outside every component: kept as the reference holds it
        out_dtype = dtype if dtype is not None and tensor.dtype.is_floating_point else tensor.dtype
        tasks.append(TensorTask(name=out_name, shape=tuple(tensor.shape), dtype=out_dtype, tensors=[tensor]))
    return cfg, tasks, ref, ref.family.model_type


def no_projector(ref: Checkpoint, components: dict[str, ComponentPlan], fmt: str) -> None:
    """A family whose vision tower writes the language model's width itself has no projector: a `components:` recipe
    may leave it out, or name a source of such a family (nothing to copy); a projector that holds tensors has no
    place in it. A family with a projector needs it named."""
    family, projector = ref.family, components.get("projector")
    if family.has_projector and projector is None:
        raise RecipeError(f"output format {fmt}: {family.model_type} ({ref.path}) holds a projector between its "
                          "vision tower and language model; name it in `components:` (projector: {source: ...})")
    if not family.has_projector and projector is not None and projector.tasks:
        raise RecipeError(f"components.projector: {family.model_type} ({ref.path}) has no projector (its vision tower "
                          f"writes the language model's width itself), so the {len(projector.tasks)} projector "
                          f"tensors of {', '.join(projector.sources)} have no place in it; leave projector out")


def _outside_use(ck: Checkpoint, kept_from: Checkpoint | None, merged: set[str], recipe: Recipe) -> str:
    """What the output does with the tensors outside `ck`'s components."""
    if merged and set(ck.outside) <= merged:
        return f"merged by {recipe.merge.merge_method}"
    own = "copied to the output as they are" if kept_from is not None and ck.path == kept_from.path else "not used"
    return f"merged by {recipe.merge.merge_method} where every model holds them alike, else {own}" if merged else own


def _check_class_layout(ref: Checkpoint, cfg: dict, tasks: list[TensorTask]) -> None:
    """Every tensor the family's class builds from `cfg` has a task, and no task writes a tensor it lacks."""
    on_disk = family_file_layout(ref.family, cfg, ref.source_config["layout"],
                                 ref.source_config.get("names", "memory"))
    check_tensors(on_disk["required"], {t.name: t for t in tasks}, "output", optional=on_disk["optional"],
                  expected_from=f"{ref.family.cls} with the output config", got_from="the merge tasks")


def sections(recipe: Recipe) -> list:
    return [recipe.merge] if recipe.merge is not None else list(recipe.multimodal.components.values())


def one_random_stream(tasks: list[TensorTask], seed: int) -> list[TensorTask]:
    """The tasks in mergekit's order (by label), the random ones drawing from one stream seeded once, as
    mergekit draws them; `random_stream: per_tensor` keeps a stream per tensor (seeded from its name)."""
    random = [t for t in tasks if t.method is not None and t.method.random]
    if not random:
        return tasks
    stream = SharedStream(seed)
    for t in random:
        t.stream = stream
    return sorted(tasks, key=lambda t: t.label or t.name)


def build_plan(recipe: Recipe, *, seed: int | None = None, offline: bool | None = None,
               opener: Opener | None = None) -> Plan:
    """`opener`: checkpoints already opened (a search plans many candidates over the same inputs)."""
    notes: list[str] = []
    warnings: list[str] = []
    ignored_keys(recipe, notes, warnings)
    opener = opener or Opener(recipe.folder, offline=offline)
    components: dict[str, ComponentPlan] = {}
    if recipe.merge is not None:
        section = recipe.merge
        models = section.input_models()
        ref = section.base_model or models[0]
        ckpts = [opener(r) for r in models]  # opened (and checked) before anything is planned
        whole = any(ck.whole for ck in ckpts)  # then no input has components to merge or copy below
        common = [] if whole else [c for c in COMPONENTS if all(c in ck.components for ck in ckpts)]
        if whole:
            components[WHOLE] = plan_whole(section, ckpts, opener, seed=seed, notes=notes, warnings=warnings)
        elif not common:
            raise RecipeError("the models share no component (vision, projector, language) to merge")
        in_family = any(ck.family is not None for ck in ckpts)  # a VLM's other components come along below
        if section.slices is not None and len(common) > 1:  # layer ranges name the language model's layers
            common = ["language"]
        for cname in COMPONENTS:
            if cname in common:
                components[cname] = plan_merge_section(section, cname, opener, seed=seed, notes=notes,
                                                       warnings=warnings, in_family=in_family)
            else:  # from the base model, or else the first input that holds it (a VLM beside text-only LLMs)
                holder = next((r for r in [ref, *models] if cname in opener(r).components), None)
                if holder is None:
                    continue
                components[cname] = plan_copy(opener(holder), opener.path(holder), cname,
                                              dtype=dtype_of(section.dtype), out_dtype=dtype_of(section.out_dtype))
                notes.append(f"{cname}: copied from {opener.path(holder)} (not every model has one)")
        fmt = "whole" if WHOLE in components else "family" if set(components) == set(COMPONENTS) else "hf"
        if fmt == "hf" and len(components) != 1:
            raise RecipeError(f"the models give components {', '.join(components)}; name each in a `components:` recipe")
    else:
        mm = recipe.multimodal
        dtype, out_dtype = dtype_of(mm.dtype), dtype_of(mm.out_dtype)
        for cname, section in mm.components.items():
            where = f"components.{cname}."
            if isinstance(section, SourceSection):
                components[cname] = plan_copy(opener(section.source), opener.path(section.source), cname,
                                              dtype=dtype, out_dtype=out_dtype)
            else:
                components[cname] = plan_merge_section(section, cname, opener, dtype=dtype, out_dtype=out_dtype,
                                                       seed=seed, where=where, notes=notes, warnings=warnings,
                                                       in_family=mm.output.format != "hf")
        components = {c: components[c] for c in COMPONENTS if c in components}
        fmt = mm.output.format

    preprocessor = None
    kept_from = None  # the checkpoint whose outside tensors the output holds
    merged: set[str] = set()  # those of them merged across the inputs
    if fmt == "whole":
        config, tasks, side = _whole_output(components[WHOLE])
    elif fmt == "hf":
        (cp,) = components.values()
        config, tasks, side, preprocessor = _hf_output(cp, notes)
    else:
        config, tasks, kept_from, fmt = _family_output(components, opener, fmt)
        side = kept_from.path
        if recipe.merge is not None and recipe.merge.slices is None:
            tasks, merged = merge_outside(tasks, recipe.merge, kept_from, opener, seed=seed, notes=notes)
    _set_dtype(config, _uniform_dtype(tasks))
    for ck in opener.cache.values():
        by_reason: dict[str, list[str]] = {}
        for prefix, why in ck.outside_reasons.items():
            by_reason.setdefault(why, []).append(prefix)
        if by_reason:
            how = _outside_use(ck, kept_from, merged, recipe)
            notes.append(f"{ck.path}: outside its components, {how}: "
                         + "; ".join(f"{shown(p, ck)} ({why})" for why, p in by_reason.items()))
    if seed is not None and not any(getattr(sec, "random_stream", None) == "per_tensor" for sec in sections(recipe)):
        tasks = one_random_stream(tasks, seed)
    text = components.get("language") or components.get(WHOLE)
    tokenizer = text.tokenizer if text is not None else None
    inputs = [part for key in opener.cache for part in opener.loras.get(key, (key,))] + opener.side_only
    return Plan(recipe=recipe, components=components, output_format=fmt, config=config, side_files_from=side,
                tasks=tasks, notes=notes, warnings=warnings, tokenizer=tokenizer, preprocessor=preprocessor,
                inputs=inputs)


def plan_merge(recipe, *, seed: int | None = None, offline: bool | None = None) -> Plan:
    """Parse and plan a recipe (path, YAML text, dict) without reading tensor data. `offline`: hub IDs resolve
    from the local cache only (default: HF_HUB_OFFLINE)."""
    return build_plan(load_recipe(recipe), seed=seed, offline=offline)
