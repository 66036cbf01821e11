"""One merge section -> the plan of its component, through one per-tensor body, as mergekit plans it.

A `models:` section is one slice that holds every layer of every model, its sources the models with their own
`parameters`, walked in the reference model's tensor order; a `slices:` section is walked slice by slice
(engine/slices.py). Either walk gives, per output tensor, the slice it comes from, each source's name for it and
its gradient position t; `TensorPlanner.task` turns that into a `TensorTask` the same way for both.

Parameter values are resolved per tensor as mergekit 0.1.5 does: a source's own `parameters` first, then the
slice's, then the global `parameters`; per-model parameters of the base model are not used by methods that need a
base; gradients are interpolated at t = layer / (layers - 1) for tensors of a numbered layer (t = 1 for a one-layer
model) and t = 0 for all other tensors (embeddings, final norm, head); in a model merged whole, within each stack
of numbered layers, as mergekit infers them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from ..adapters import WHOLE_COMPONENT as WHOLE
from ..checkpoint import Component
from ..errors import RecipeError, ShapeMismatchError
from ..io.check import check_tensors
from ..methods import check_inputs, get_method, validate_params
from ..methods._statistics import plan_statistics
from .inputs import SectionInputs, section_inputs
from .opener import Opener
from .parameters import check_names, count_layers, layer_position, make_validator, resolve, stack_positions
from .recipe import InputSlice, MergeSection, OutputSlice, dtype_of
from .slices import Walked, layer_config, walk_slices
from .tasks import ComponentPlan, TensorTask, native_dtype, planned, tensor_seed, written_dtype


def same_layout(ref_name: str, ref: Component, other_name: str, other: Component, cname: str) -> None:
    if other.arch != ref.arch:
        raise ShapeMismatchError(f"{cname}: {ref_name} is a {ref.arch} but {other_name} is a {other.arch}")
    check_tensors(ref.tensors, other.tensors, cname, expected_from=ref_name, got_from=other_name)


def whole_model_slice(section: MergeSection, refs: list[str], num_layers: int) -> OutputSlice:
    """A `models:` section as mergekit normalises it: one slice whose sources hold every layer of every model.
    Built without validation: a component with no numbered layers (a projector) has an empty layer range."""
    given: dict = {}
    for entry in section.models:  # a model listed twice: its first entry's parameters, as model_parameters reads
        given.setdefault(entry.model, entry.parameters)
    sources = [InputSlice.model_construct(model=r, layer_range=(0, num_layers), parameters=given.get(r)) for r in refs]
    return OutputSlice.model_construct(sources=sources, base_model=None, residual_weight=None, parameters=None)


def walk_whole_models(reference: Component, sl: OutputSlice, at: str, *, stacks: bool = False) -> list[Walked]:
    """Every tensor of the reference model, in its order, from the same name in every source. `stacks`: a model
    merged whole (no components), whose gradient positions run within each stack of numbered layers."""
    if stacks:
        position = stack_positions(reference.tensors)
        return [Walked(name, {s.model: name for s in sl.sources}, sl, at, position[name]) for name in reference.tensors]
    num_layers = count_layers(reference)
    return [Walked(name, {s.model: name for s in sl.sources}, sl, at, layer_position(name, num_layers))
            for name in reference.tensors]


@dataclass
class TensorPlanner:
    """What every task of one section shares: the method, the inputs, the dtypes, the seed."""

    section: MergeSection
    cname: str
    spec: object  # methods.MethodSpec
    inputs: SectionInputs
    opener: Opener
    dtype: object = None
    out_dtype: object = None
    seed: int | None = None

    def __post_init__(self):
        params = {**self.spec.model_params, **self.spec.global_params}
        self.validators = {n: make_validator(self.spec.name, n, p) for n, p in params.items()}

    def base_of(self, sl: OutputSlice) -> str | None:
        return (sl.base_model or self.section.base_model) if self.spec.uses_base else None

    def task(self, w: Walked) -> TensorTask:
        """The task of one walked output tensor: inputs, resolved and validated parameters, statistics, dtypes."""
        spec, sl, comps = self.spec, w.slice, self.inputs.comps
        base_ref = self.base_of(sl)
        if base_ref is not None and base_ref not in w.names:
            raise RecipeError(f"{w.at}: the base model {base_ref} is not among the slice's sources")
        tensors = {}
        for model, name in w.names.items():
            if name not in comps[model].tensors:
                raise ShapeMismatchError(f"{w.at}: {self.opener.path(model)} has no tensor {name}")
            tensors[model] = comps[model].tensors[name]
        others = [s for s in sl.sources if s.model != base_ref]
        check_inputs(spec, len(others), base_ref is not None)
        scopes = [sl.parameters, self.section.parameters]
        per_model = [resolve(spec.model_params, [s.parameters, *scopes], w.names[s.model], w.t, self.validators)
                     for s in others]
        shared = resolve(spec.global_params, scopes, w.out_name, w.t, self.validators)
        try:
            params, global_params = validate_params(spec, per_model, shared)
        except RecipeError as e:
            raise RecipeError(f"{w.at} tensor {w.out_name}: {e}") from None
        params = plan_statistics(spec, params, [s.model for s in others], self.opener.folder, f"{w.at}: ")
        # statistics files are keyed by each input's own tensor names, not the output's renumbered ones
        own_names = [w.names[s.model] for s in others]
        merged = [tensors[s.model] for s in others]
        base = tensors[base_ref] if base_ref is not None else None
        shapes = {tuple(x.shape) for x in tensors.values()}
        if len(shapes) > 1:
            raise ShapeMismatchError(f"{w.at}: tensor {w.out_name} has shapes {sorted(shapes)} in its sources")
        all_inputs = merged + ([base] if base is not None else [])
        shape = shapes.pop()
        extra = self.inputs.extra_rows.get(w.out_name)
        if extra is not None:
            shape = (shape[0] + extra.shape[0], *shape[1:])
        return TensorTask(name=w.out_name, shape=shape, dtype=written_dtype(all_inputs, self.dtype, self.out_dtype),
                          tensors=merged, base=base, method=spec, params=params, global_params=global_params,
                          input_dtype=self.dtype,
                          seed=tensor_seed(self.seed, self.cname, w.out_name) if spec.random else None,
                          extra_rows=extra, native_dtype=native_dtype(all_inputs, self.dtype, self.section.compute_dtype),
                          label=max(w.names.values()),
                          input_names=None if set(own_names) == {w.out_name} else own_names)


def plan_merge_section(section: MergeSection, cname: str, opener: Opener, *, dtype=None, out_dtype=None,
                       seed=None, where: str = "", notes: list[str], warnings: list[str],
                       in_family: bool = False) -> ComponentPlan:
    """`in_family`: the output is a VLM family's checkpoint, whose names the merged language model takes."""
    dtype = dtype_of(section.dtype) or dtype
    out_dtype = dtype_of(section.out_dtype) or out_dtype
    try:
        spec = get_method(section.merge_method)
    except RecipeError as e:
        raise RecipeError(f"{where}merge_method: {e}") from None
    base_ref = section.base_model if spec.uses_base else None
    check_names(spec, section, base_ref, where, notes, warnings)
    refs = section.input_models()
    ref_key = section.base_model or refs[0]  # a `slices:` section's: its first slice's first source
    inputs = section_inputs(section, cname, opener, refs, ref_key, where, notes, in_family=in_family)
    reference = inputs.comps[ref_key]
    planner = TensorPlanner(section, cname, spec, inputs, opener, dtype, out_dtype, seed)
    if section.slices is None:
        for r in refs:
            if r != ref_key:
                same_layout(inputs.paths[ref_key], reference, inputs.paths[r], inputs.comps[r], cname)
        whole = whole_model_slice(section, refs, count_layers(reference))
        walked = walk_whole_models(reference, whole, f"{where}{cname}", stacks=cname == WHOLE)
    else:
        walked, sources_of_layer = walk_slices(section, inputs.comps, where)
    tasks = {w.out_name: planner.task(w) for w in walked}
    how = f"merge {spec.name}"
    if section.slices is None:
        return _whole_models_plan(whole, cname, how, inputs, ref_key, base_ref, tasks, dtype, out_dtype)
    return _slices_plan(section, refs, cname, how, inputs, ref_key, tasks, sources_of_layer, where, notes)


def _whole_models_plan(whole: OutputSlice, cname: str, how: str, inputs: SectionInputs, ref_key: str,
                       base_ref: str | None, tasks: dict[str, TensorTask], dtype, out_dtype) -> ComponentPlan:
    """The component of a `models:` section; tensors only one input has (engine/inputs.py) are copied as they are."""
    for name, t in inputs.kept.items():
        tasks[name] = TensorTask(name=name, shape=tuple(t.shape), dtype=written_dtype([t], dtype, out_dtype),
                                 tensors=[t], label=name)
    if inputs.kept:  # in the order of the input that holds every tensor
        holder = next(c for c in (ck.component(cname) for ck in inputs.ckpts.values()) if set(tasks) <= set(c.tensors))
        tasks = {n: tasks[n] for n in holder.tensors if n in tasks}
    others = [s for s in whole.sources if s.model != base_ref]
    sources = ([inputs.paths[base_ref]] if base_ref else []) + [inputs.paths[s.model] for s in others]
    written = ([None] if base_ref else []) + [s.parameters for s in others]
    reference = inputs.comps[ref_key]
    updates = {"vocab_size": inputs.vocab} if inputs.vocab is not None else {}
    config = {**copy.deepcopy(reference.config), **updates}
    return ComponentPlan(name=cname, how=how, sources=sources,
                         component=planned(reference, cname, config, tasks), tasks=tasks,
                         reference=inputs.ckpts[ref_key], has_base=base_ref is not None, written=written,
                         config_updates=updates, tokenizer=inputs.tokenizer)


def _slices_plan(section: MergeSection, refs: list[str], cname: str, how: str, inputs: SectionInputs, ref_key: str,
                 tasks: dict[str, TensorTask], sources_of_layer: list[tuple[str, int]], where: str,
                 notes: list[str]) -> ComponentPlan:
    """The component of a `slices:` section: the config follows the output layers."""
    reference = inputs.comps[ref_key]
    updates = layer_config(reference.config, inputs.comps, sources_of_layer)
    if inputs.vocab is not None:
        updates["vocab_size"] = inputs.vocab
    config = {**copy.deepcopy(reference.config), **updates}
    bases = [r for r in refs if r == section.base_model]
    sources = [inputs.paths[r] for r in bases + [r for r in refs if r not in bases]]
    out_layers = len(sources_of_layer)
    notes.append(f"{where}{cname}: {len(section.slices)} slice(s), {out_layers} output layers")
    if out_layers != count_layers(reference):
        notes.append(f"{where}{cname}: {out_layers} output layers from {count_layers(reference)}-layer inputs; "
                     f"num_hidden_layers is {out_layers}")
    return ComponentPlan(name=cname, how=how, sources=sources,
                         component=planned(reference, cname, config, tasks), tasks=tasks,
                         reference=inputs.ckpts[ref_key], has_base=bool(bases), written=[None] * len(sources),
                         config_updates=updates, tokenizer=inputs.tokenizer)
