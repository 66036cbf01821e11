"""`slices:` recipes: output layers merged from layer ranges of the inputs, as mergekit 0.1.5 plans them.

Output layers are numbered in slice order. Layer `i` of a slice is merged from layer `start + i` of each
source (sources may start at different layers); gradients run over the slice's layers (t = i / (n - 1), 1
for a one-layer slice). A value comes from the source's `parameters`, then the slice's, then the global ones;
per-model values are read with the source's own tensor name, shared ones with the output's; so are the entries
of a source's `statistics` file (regmean, fisher). The embeddings
come from the first slice's sources and the other tensors outside the layers (final norm, head) from the
last slice's, at t = 0. The output config gets the new layer count, and per-layer config lists (such as
`layer_types`) follow the layers they came from.
"""

from __future__ import annotations

import copy

from ..checkpoint import Component
from ..errors import RecipeError, ShapeMismatchError
from .inputs import section_inputs
from .opener import Opener
from .parameters import LAYER_RE, count_layers, make_validator, resolve
from .recipe import MergeSection, OutputSlice
from .tasks import ComponentPlan, TensorTask, native_dtype, planned, tensor_seed, written_dtype

# Tensors outside the layers that come before them (from the first slice's sources); the rest come after.
PRE_LAYER_MARKERS = ("embed_tokens", "embed_positions", "wte", "wpe", "word_embeddings", "embed_in")


def layer_names(component: Component) -> dict[int, dict[str, str]]:
    """layer index -> {template with `{}` for the index: tensor name}."""
    out: dict[int, dict[str, str]] = {}
    for name in component.tensors:
        m = LAYER_RE.search(name)
        if m:
            i = int(m.group(1))
            out.setdefault(i, {})[name[:m.start(1)] + "{}" + name[m.end(1):]] = name
    return out


def plan_slices(section: MergeSection, cname: str, opener: Opener, spec, *, dtype=None, out_dtype=None, seed=None,
                where: str = "", notes: list[str]) -> ComponentPlan:
    """The tasks of a `slices:` section whose method (`spec`), dtypes and parameter names plan_merge_section has
    already looked up and checked."""
    from ..methods import check_inputs, validate_params
    from ..methods._statistics import plan_statistics

    refs = section.input_models()
    reference_ref = section.base_model or section.slices[0].sources[0].model
    inputs = section_inputs(section, cname, opener, refs, reference_ref, where, notes)
    ckpts, comps = inputs.ckpts, inputs.comps
    layers = {r: layer_names(c) for r, c in comps.items()}
    reference = comps[reference_ref]
    validators = {n: make_validator(spec.name, n, p) for n, p in {**spec.model_params, **spec.global_params}.items()}
    tasks: dict[str, TensorTask] = {}
    sources_of_layer: list[tuple[str, int]] = []  # output layer -> (model, layer) it follows in the config

    def add(out_name: str, names: dict[str, str], sl: OutputSlice, at: str, t: float) -> None:
        """One task: `names` maps each source model of `sl` to its tensor name."""
        base_ref = (sl.base_model or section.base_model) if spec.uses_base else None
        if base_ref is not None and base_ref not in names:
            raise RecipeError(f"{at}: the base model {base_ref} is not among the slice's sources")
        tensors = {}
        for model, name in names.items():
            if name not in comps[model].tensors:
                raise ShapeMismatchError(f"{at}: {opener.path(model)} has no tensor {name}")
            tensors[model] = comps[model].tensors[name]
        others = [s for s in sl.sources if s.model != base_ref]
        check_inputs(spec, len(others), base_ref is not None)
        per_model = [resolve(spec.model_params, [s.parameters, sl.parameters, section.parameters], names[s.model], t,
                             validators) for s in others]
        shared = resolve(spec.global_params, [sl.parameters, section.parameters], out_name, t, validators)
        try:
            params, global_params = validate_params(spec, per_model, shared)
        except RecipeError as e:
            raise RecipeError(f"{at} ({out_name}): {e}") from None
        params = plan_statistics(spec, params, [s.model for s in others], opener.folder, f"{at}: ")
        # statistics files are keyed by each input's own tensor names, not the output's renumbered ones
        own_names = [names[s.model] for s in others]
        merged = [tensors[s.model] for s in others]
        base = tensors[base_ref] if base_ref is not None else None
        shapes = {tuple(x.shape) for x in tensors.values()}
        if len(shapes) > 1:
            raise ShapeMismatchError(f"{at}: tensor {out_name} has shapes {sorted(shapes)} in its sources")
        all_inputs = merged + ([base] if base is not None else [])
        shape = shapes.pop()
        extra = inputs.extra_rows.get(out_name)
        if extra is not None:
            shape = (shape[0] + extra.shape[0], *shape[1:])
        tasks[out_name] = TensorTask(name=out_name, shape=shape, dtype=written_dtype(all_inputs, dtype, out_dtype),
                               tensors=merged, base=base, method=spec, params=params, global_params=global_params,
                               input_dtype=dtype, seed=tensor_seed(seed, cname, out_name) if spec.random else None,
                               extra_rows=extra, native_dtype=native_dtype(all_inputs, dtype, section.compute_dtype),
                               label=max(names.values()),
                               input_names=None if set(own_names) == {out_name} else own_names)

    outside = [n for n in reference.tensors if not LAYER_RE.search(n)]
    first, last = section.slices[0], section.slices[-1]
    for name in outside:
        if any(marker in name for marker in PRE_LAYER_MARKERS):
            add(name, {s.model: name for s in first.sources}, first, f"{where}slices[0]", 0.0)
    out_layer = 0
    for k, sl in enumerate(section.slices):
        at = f"{where}slices[{k}]"
        for s in sl.sources:
            have = count_layers(comps[s.model])
            if s.layer_range[1] > have:
                raise RecipeError(f"{at}: layer_range {list(s.layer_range)} of {s.model} runs past its {have} layers")
        n = sl.num_layers
        for i in range(n):
            t = i / (n - 1) if n > 1 else 1.0
            first_src = sl.sources[0]
            templates = layers[first_src.model].get(first_src.layer_range[0] + i, {})
            for s in sl.sources[1:]:
                other = layers[s.model].get(s.layer_range[0] + i, {})
                if set(other) != set(templates):
                    missing = sorted(set(templates) ^ set(other))[0].format(s.layer_range[0] + i)
                    raise ShapeMismatchError(f"{at}: layer {s.layer_range[0] + i} of {s.model} and layer "
                                             f"{first_src.layer_range[0] + i} of {first_src.model} differ ({missing})")
            for template in templates:
                add(template.format(out_layer), {s.model: template.format(s.layer_range[0] + i) for s in sl.sources},
                    sl, at, t)
            sources_of_layer.append((first_src.model, first_src.layer_range[0] + i))
            out_layer += 1
    for name in outside:
        if not any(marker in name for marker in PRE_LAYER_MARKERS):
            add(name, {s.model: name for s in last.sources}, last, f"{where}slices[{len(section.slices) - 1}]", 0.0)

    updates = layer_config(reference.config, comps, sources_of_layer)
    if inputs.vocab is not None:
        updates["vocab_size"] = inputs.vocab
    config = {**copy.deepcopy(reference.config), **updates}
    bases = [r for r in refs if r == section.base_model]
    sources = [str(opener.path(r)) for r in bases + [r for r in refs if r not in bases]]
    notes.append(f"{where}{cname}: {len(section.slices)} slice(s), {out_layer} output layers")
    cp = ComponentPlan(name=cname, how=f"merge {spec.name}", sources=sources,
                       component=planned(reference, cname, config, tasks), tasks=tasks,
                       reference=ckpts[reference_ref], has_base=bool(bases), written=[None] * len(sources),
                       config_updates=updates, tokenizer=inputs.tokenizer)
    if out_layer != count_layers(reference):
        notes.append(f"{where}{cname}: {out_layer} output layers from {count_layers(reference)}-layer inputs; "
                     f"num_hidden_layers is {out_layer}")
    return cp


def layer_config(config: dict, comps: dict[str, Component], sources_of_layer: list[tuple[str, int]]) -> dict:
    """The config keys that follow the output layers: the layer count, and every list with one entry per layer
    (`layer_types`, ...), each entry taken from the model and layer the output layer came from."""
    key = next((k for k in ("num_hidden_layers", "num_layers", "n_layer") if isinstance(config.get(k), int)), None)
    if key is None:
        return {}
    updates: dict = {key: len(sources_of_layer)}
    for name, value in config.items():
        if isinstance(value, list) and len(value) == config[key]:
            picked = []
            for model, layer in sources_of_layer:
                own = comps[model].config.get(name)
                picked.append(own[layer] if isinstance(own, list) and layer < len(own) else value[layer % len(value)])
            updates[name] = picked
    return updates
