"""A causal LM's per-expert file tensors read as the class holds them: fused, as transformers converts them on load.

transformers 5 saves some MoE language models (Qwen3-MoE, Qwen2-MoE, Mixtral, GLM-4-MoE) with one tensor per expert
and projection (`mlp.experts.3.gate_proj.weight`) and holds them fused (`mlp.experts.gate_up_proj`, all experts
stacked), while the language model of a VLM of the same architecture (Qwen3-VL-MoE) is saved fused. Read in the
class's in-memory layout, the two line up name by name, and a merge merges the fused tensors, as mergekit 0.1.5 does
(it loads through transformers). Which file tensors make which fused one, and how, is transformers' own conversion
mapping of the class, asked at run time; the tensors are fused only when read.
"""

from __future__ import annotations

import functools
import json

from ..checkpoint import Component, combine
from ..errors import MMMergeError
from .hf_common import _kept_on_disk, class_layout


def in_memory_layout(component: Component) -> Component:
    """`component` with its tensors under the class's in-memory names, fused where transformers fuses them on load;
    `component` itself when transformers converts none of them (or the result would not be the class's layout)."""
    config = json.dumps(component.config, sort_keys=True, default=str)
    try:
        plan = _plan(component.arch, config, tuple(sorted(component.tensors)))
    except MMMergeError:  # no such class in the installed transformers: the file names are all there is
        return component
    if not plan:
        return component
    shapes = class_layout(component.arch, component.config)["required"]
    tensors = {}
    for target, sources in plan.items():
        parts = [component.tensors[name] for _, name in sources]
        if len(sources) == 1 and sources[0][0] is None:
            tensors[target] = parts[0]  # renamed only
        else:
            shape = shapes[target]
            fuse = functools.partial(_fuse, component.arch, config, target, [pattern for pattern, _ in sources])
            tensors[target] = combine(parts, fuse, shape)
    return Component(component.name, component.arch, component.config, tensors, component.preprocess,
                     component.extra)


@functools.lru_cache(maxsize=8)
def _plan(arch: str, config_json: str, names: tuple[str, ...]) -> dict[str, list[list]]:
    """in-memory name -> [[source pattern or None, file name], ...] in transformers' loading order; {} when no file
    tensor is converted (fused or split), or when the result would not be exactly the class's tensors."""

    def compute() -> dict:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import WeightConverter

        keys = (arch, json.loads(config_json).get("model_type"))
        mappings = [get_checkpoint_conversion_mapping(key) or [] for key in keys]
        if not any(isinstance(t, WeightConverter) for mapping in mappings for t in mapping):
            return {}  # nothing converted: no need to build the class (a third of a second for a 1B model)
        _, _, converters = class_conversions(arch, config_json)
        plan = load_plan(arch, config_json, names)
        if not any(pattern is not None for sources in plan.values() for pattern, _ in sources):
            return {}
        layout = class_layout(arch, json.loads(config_json))
        if not set(layout["required"]) <= set(plan) <= {*layout["required"], *layout["optional"]}:
            return {}
        order = [*layout["required"], *layout["optional"]]  # the class's own order, which random methods draw in
        return {target: _by_pattern(plan[target], converters) for target in order if target in plan}

    return _kept_on_disk("fused-experts-3", f"{arch}\n{config_json}\n" + "\n".join(names), compute)


def _by_pattern(sources: list[list], converters) -> list[list]:
    """The sources grouped by their converter's source patterns, in its order (gate before up), experts in order."""
    patterns = next((c.source_patterns for c in converters if sources[0][0] in c.source_patterns), [None])
    return [s for p in patterns for s in sources if s[0] == p]


def load_plan(arch: str, config_json: str, names) -> dict[str, list[list]]:
    """in-memory name -> [[source pattern or None, file name], ...]: where the class's load-time conversion puts each
    of the file tensors `names`, in its order (sorted as transformers sorts them); a target the class does not hold
    is named too. A file tensor a converter splits into several targets (Inkling's `shared_w13_weight` into gate and
    up) is a source of each."""
    from transformers.core_model_loading import dot_natural_key, rename_source_key

    model, renamings, converters = class_conversions(arch, config_json)
    held = model.state_dict()
    plan: dict[str, list] = {}
    for name in sorted(names, key=dot_natural_key):
        target, pattern = rename_source_key(name, renamings, converters, model.base_model_prefix, held)
        for each in _split_targets(target, pattern, converters):
            plan.setdefault(each, []).append([pattern, name])
    return plan


def _split_targets(target: str, pattern: str | None, converters) -> list[str]:
    """`target` and the other targets its converter cuts the same source into (its other target patterns, in its
    order), where the converter's last operation is transformers' own chunking (other converters with several
    targets, Ernie-4.5-VL's text and vision experts, route each source by its own rule)."""
    from transformers import core_model_loading as loading

    converter = next((c for c in converters if pattern in c.source_patterns), None)
    cuts = tuple(getattr(loading, name) for name in ("Chunk", "Split") if hasattr(loading, name))
    if converter is None or len(converter.target_patterns) < 2 or not isinstance(converter.operations[-1], cuts):
        return [target]
    first = next((t for t in converter.target_patterns if t in target), None)
    return [target] if first is None else [target.replace(first, t) for t in converter.target_patterns]


@functools.lru_cache(maxsize=8)
def class_conversions(arch: str, config_json: str):
    """The class built on the meta device, its renamings and its converters (transformers' load-time mapping): one
    build per class and config for everything that asks how the class converts its tensors."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    from .hf_export import class_on_meta

    model = class_on_meta(arch, config_json)
    transforms = get_model_conversion_mapping(model)
    return (model, [t for t in transforms if isinstance(t, WeightRenaming)],
            [t for t in transforms if isinstance(t, WeightConverter)])


def _fuse(arch: str, config_json: str, target: str, patterns: list[str], *tensors):
    """The in-memory tensor `target` from its file tensors, by the operations of the converter that makes it (given
    the class and its config, as transformers gives them: Inkling 2's unpadding of its unembedding reads both)."""
    model, _, converters = class_conversions(arch, config_json)
    converter = next(c for c in converters if patterns[0] in c.source_patterns)
    collected: dict[str, list] = {}
    for pattern, tensor in zip(patterns, tensors):
        collected.setdefault(pattern, []).append(tensor)
    for op in converter.operations:
        collected = op.convert(collected, source_patterns=converter.source_patterns,
                               target_patterns=converter.target_patterns, full_layer_name=target,
                               config=model.config, model=model)
    if len(collected) > 1:  # a converter that splits its source (gate and up): the part that is `target`
        collected = {k: v for k, v in collected.items() if k in target}
    (result,) = collected.values()
    return result
