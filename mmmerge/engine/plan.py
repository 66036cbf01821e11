"""Recipe -> plan: one task per output tensor, everything validated before any tensor data is read.

Validation covers: model paths open and have a known architecture; every merged component has the same
tensor names, shapes and architecture in every input (a tensor in only some inputs is an error, never
dropped); the method takes the inputs given; every parameter resolves to a valid value for every
tensor. Only headers are read (shapes and dtypes); tensor data is read by the executor, one task at a time.

Parameter values are resolved per tensor as mergekit 0.1.5 does for a ``models:`` config: a model's own
``parameters`` first, then the global ``parameters``; per-model parameters of the base model are not
used by methods that need a base; gradients are interpolated at t = layer / (layers - 1) for tensors of
a numbered layer (t = 1 for a one-layer model) and t = 0 for all other tensors (embeddings, final norm,
head).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapters.families import rename
from ..adapters.hf_common import class_layout, layout_of
from ..adapters.hf_causal_lm import untie
from ..adapters.hf_export import hf_config_dict
from ..adapters.hf_multimodal import family_tensors
from ..adapters.preprocess import image_processor_config
from ..checkpoint import COMPONENTS, Checkpoint, Component
from ..errors import RecipeError, ShapeMismatchError
from ..io.check import check_tensors
from .inputs import section_inputs
from .opener import Opener
from .slices import plan_slices
from .tasks import ComponentPlan, SharedStream, TensorTask, native_dtype, planned, tensor_seed, written_dtype
from .parameters import check_names, count_layers, layer_position, make_validator, resolve
from .recipe import MergeSection, Recipe, SourceSection, dtype_of, ignored_keys, load_recipe


@dataclass
class Plan:
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
        from ..methods._statistics import StatisticsFile

        found = {str(v) for t in self.tasks for p in t.params for v in p.values() if isinstance(v, StatisticsFile)}
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


def _same_layout(ref_name: str, ref: Component, other_name: str, other: Component, cname: str) -> None:
    if other.arch != ref.arch:
        raise ShapeMismatchError(f"{cname}: {ref_name} is a {ref.arch} but {other_name} is a {other.arch}")
    check_tensors(ref.tensors, other.tensors, cname, expected_from=ref_name, got_from=other_name)


def plan_merge_section(section: MergeSection, cname: str, opener: Opener, *, dtype=None, out_dtype=None,
                       seed=None, where: str = "", notes: list[str], warnings: list[str]) -> ComponentPlan:
    from ..methods import check_inputs, get_method, validate_params
    from ..methods._statistics import plan_statistics

    dtype = dtype_of(section.dtype) or dtype
    out_dtype = dtype_of(section.out_dtype) or out_dtype
    try:
        spec = get_method(section.merge_method)
    except RecipeError as e:
        raise RecipeError(f"{where}merge_method: {e}") from None
    base_ref = section.base_model if spec.uses_base else None
    check_names(spec, section, base_ref, where, notes, warnings)
    if section.slices is not None:
        return plan_slices(section, cname, opener, spec, dtype=dtype, out_dtype=out_dtype, seed=seed, where=where,
                           notes=notes)
    refs = section.input_models()

    ref_key = section.base_model or refs[0]
    inputs = section_inputs(section, cname, opener, refs, ref_key, where, notes)
    ckpts, paths, comps, extra_rows = inputs.ckpts, inputs.paths, inputs.comps, inputs.extra_rows
    reference = comps[ref_key]
    for r in refs:
        if r != ref_key:
            _same_layout(paths[ref_key], reference, paths[r], comps[r], cname)

    others = [r for r in refs if r != base_ref]
    check_inputs(spec, len(others), base_ref is not None)
    num_layers = count_layers(reference)
    validators = {n: make_validator(spec.name, n, p) for n, p in {**spec.model_params, **spec.global_params}.items()}
    model_scopes = [[section.model_parameters(r), section.parameters] for r in others]
    global_scope = [section.parameters]

    tasks = {}
    for name, ref_t in reference.tensors.items():
        t = layer_position(name, num_layers)
        per_model = [resolve(spec.model_params, scopes, name, t, validators) for scopes in model_scopes]
        global_raw = resolve(spec.global_params, global_scope, name, t, validators)
        try:
            params, global_params = validate_params(spec, per_model, global_raw)
        except RecipeError as e:
            raise RecipeError(f"{where}{cname} tensor {name}: {e}") from None
        params = plan_statistics(spec, params, others, [name] * len(others), name, opener.folder,
                                 f"{where}{cname}: ")
        merged = [comps[r].tensors[name] for r in others]
        base = comps[base_ref].tensors[name] if base_ref is not None else None
        all_inputs = merged + ([base] if base is not None else [])
        shape = tuple(ref_t.shape)
        if name in extra_rows:
            shape = (shape[0] + extra_rows[name].shape[0], *shape[1:])
        tasks[name] = TensorTask(name=name, shape=shape, dtype=written_dtype(all_inputs, dtype, out_dtype), tensors=merged,
                           base=base, method=spec, params=params, global_params=global_params, input_dtype=dtype,
                           seed=tensor_seed(seed, cname, name) if spec.random else None,
                           extra_rows=extra_rows.get(name),
                           native_dtype=native_dtype(all_inputs, dtype, section.compute_dtype), label=name)
    for name, t in inputs.kept.items():
        tasks[name] = TensorTask(name=name, shape=tuple(t.shape), dtype=written_dtype([t], dtype, out_dtype),
                                 tensors=[t], label=name)
    if inputs.kept:  # in the order of the input that holds every tensor
        whole = next(c for c in (ck.component(cname) for ck in ckpts.values()) if set(tasks) <= set(c.tensors))
        tasks = {n: tasks[n] for n in whole.tensors if n in tasks}
    sources = ([paths[base_ref]] if base_ref else []) + [paths[r] for r in others]
    written = ([None] if base_ref else []) + [section.model_parameters(r) for r in others]
    config = copy.deepcopy(reference.config)
    updates = {"vocab_size": inputs.vocab} if inputs.vocab is not None else {}
    config.update(updates)
    return ComponentPlan(cname, f"merge {spec.name}", sources, planned(reference, cname, config, tasks), tasks,
                         ckpts[ref_key], base_ref is not None, written, updates, inputs.tokenizer)


def plan_copy(ckpt: Checkpoint, path: Path, cname: str, *, dtype=None, out_dtype=None) -> ComponentPlan:
    comp = ckpt.component(cname)
    tasks = {n: TensorTask(name=n, shape=tuple(t.shape), dtype=written_dtype([t], dtype, out_dtype), tensors=[t])
             for n, t in comp.tensors.items()}
    return ComponentPlan(cname, "copy", [str(path)], planned(comp, cname, copy.deepcopy(comp.config), tasks), tasks, ckpt)


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
    required, _ = layout_of(comp)
    missing = [n for n in required if n not in cp.tasks]
    if missing and all(n in cp.tasks for n in class_layout(comp.arch, comp.config)["required"]):
        missing = []  # the class's in-memory names, which transformers 5 loads too (Mixtral's fused experts)
    if missing:  # e.g. Qwen-VL's vision class also holds the projector (`merger`)
        raise RecipeError(f"{cp.name}: the {comp.arch} class also holds tensor {missing[0]} ({len(missing)} such), "
                          f"which the {cp.name} component does not; write the whole model in its family's format "
                          f"(a `components:` recipe with all three components and output: {{format: family}})")
    side = cp.reference.side_files
    pre = None
    if comp.preprocess and side is None:
        pre = image_processor_config(comp.preprocess)
    return cfg, tasks, side, pre


def _untie_config(cfg: dict) -> None:
    """lm_head is stored and may differ from the embeddings: the config (and a LLaVA's text config) says so."""
    for c in (cfg, cfg.get("text_config") or {}):
        if c.get("tie_word_embeddings"):
            c["tie_word_embeddings"] = False


def family_reference(components: dict[str, ComponentPlan], opener: Opener, fmt: str) -> Checkpoint:
    """The multimodal checkpoint whose config, layout and processor the output takes: the first input of the
    family `fmt` names, or, for `family`, the first input that holds all three components (the projector's
    source first, then the language model's, then the vision tower's, then any other input)."""
    order = [components["projector"].reference, components["language"].reference, components["vision"].reference]
    order += list(opener.cache.values())
    found = next((ck for ck in order if ck.family is not None and fmt in ("family", ck.family.model_type)), None)
    if found is None:
        what = "multimodal checkpoint" if fmt == "family" else f"{fmt} checkpoint"
        hint = "; build a new LLaVA with `mmmerge stitch`" if fmt in ("family", "llava") else ""
        raise RecipeError(f"output format {fmt}: no {what} among the inputs to take its config and processor "
                          f"from{hint}")
    return found


def _family_output(components: dict[str, ComponentPlan], opener: Opener, fmt: str) -> tuple[dict, list[TensorTask], Path, str]:
    ref = family_reference(components, opener, fmt)
    for cname, cp in components.items():
        if cp.config_updates:  # a new layer count: checked against the class built from the new config below
            continue
        own = ref.components[cname]
        if cname == "language" and "lm_head.weight" in cp.tasks:
            own = untie(own)  # an untied output of a tied model: the config is changed below
        _same_layout(f"the {ref.family.model_type} config of {ref.path}", own, f"the {cp.how} output",
                     cp.component, cname)
    cfg = copy.deepcopy(ref.source_config["config.json"])
    cfg[ref.family.text_config].update(components["language"].config_updates)
    if "lm_head.weight" in components["language"].tasks:
        _untie_config(cfg)
    comps = {n: Component(n, c.component.arch, c.component.config, dict(c.tasks), extra=c.component.extra)
             for n, c in components.items()}
    tasks = []
    for out_name, task in family_tensors(ref.family, comps, ref.source_config["layout"]).items():
        task = copy.copy(task)
        task.name = out_name
        tasks.append(task)
    if any(cp.config_updates for cp in components.values()):
        _check_class_layout(ref, cfg, tasks)
    dtype = _uniform_dtype(tasks)
    for out_name, tensor in ref.outside.items():  # outside every component: kept as the reference holds it
        out_dtype = dtype if dtype is not None and tensor.dtype.is_floating_point else tensor.dtype
        tasks.append(TensorTask(name=out_name, shape=tuple(tensor.shape), dtype=out_dtype, tensors=[tensor]))
    return cfg, tasks, ref.path, ref.family.model_type


def _check_class_layout(ref: Checkpoint, cfg: dict, tasks: list[TensorTask]) -> None:
    """Every tensor the family's class builds from `cfg` has a task, and no task writes a tensor it lacks."""
    layout = class_layout(ref.family.cls, cfg)
    renames = ref.family.layout(ref.source_config["layout"])
    on_disk = {part: {rename(n, renames, to_memory=False): s for n, s in layout[part].items()}
               for part in ("required", "optional")}
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
        ref = section.base_model or section.input_models()[0]
        ckpts = [opener(r) for r in section.input_models()]  # opened (and checked) before anything is planned
        common = [c for c in COMPONENTS if all(c in ck.components for ck in ckpts)]
        if not common:
            raise RecipeError("the models share no component (vision, projector, language) to merge")
        if section.slices is not None and len(common) > 1:  # layer ranges name the language model's layers
            common = ["language"]
        for cname in COMPONENTS:
            if cname in common:
                components[cname] = plan_merge_section(section, cname, opener, seed=seed, notes=notes,
                                                       warnings=warnings)
            else:  # from the base model, or else the first input that holds it (a VLM beside text-only LLMs)
                holder = next((r for r in [ref, *section.input_models()] if cname in opener(r).components), None)
                if holder is None:
                    continue
                components[cname] = plan_copy(opener(holder), opener.path(holder), cname,
                                              dtype=dtype_of(section.dtype), out_dtype=dtype_of(section.out_dtype))
                notes.append(f"{cname}: copied from {opener.path(holder)} (not every model has one)")
        fmt = "family" if set(components) == set(COMPONENTS) else "hf"
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
                                                       seed=seed, where=where, notes=notes, warnings=warnings)
        components = {c: components[c] for c in COMPONENTS if c in components}
        fmt = mm.output.format

    preprocessor = None
    kept_from = None
    if fmt == "hf":
        (cp,) = components.values()
        config, tasks, side, preprocessor = _hf_output(cp, notes)
    else:
        config, tasks, side, fmt = _family_output(components, opener, fmt)
        kept_from = side
    _set_dtype(config, _uniform_dtype(tasks))
    for ck in opener.cache.values():
        by_reason: dict[str, list[str]] = {}
        for prefix, why in ck.outside_reasons.items():
            by_reason.setdefault(why, []).append(f"{prefix}*")
        if by_reason:
            how = "copied to the output as they are" if ck.path == kept_from else "not used"
            notes.append(f"{ck.path}: outside its components, {how}: "
                         + "; ".join(f"{', '.join(p)} ({why})" for why, p in by_reason.items()))
    if seed is not None and not any(getattr(sec, "random_stream", None) == "per_tensor" for sec in sections(recipe)):
        tasks = one_random_stream(tasks, seed)
    tokenizer = components["language"].tokenizer if "language" in components else None
    return Plan(recipe, components, fmt, config, side, tasks, notes, warnings, tokenizer, preprocessor,
                [part for key in opener.cache for part in opener.loras.get(key, (key,))] + opener.side_only)


def plan_merge(recipe, *, seed: int | None = None, offline: bool | None = None) -> Plan:
    """Parse and plan a recipe (path, YAML text, dict) without reading tensor data. `offline`: hub IDs resolve
    from the local cache only (default: HF_HUB_OFFLINE)."""
    return build_plan(load_recipe(recipe), seed=seed, offline=offline)
