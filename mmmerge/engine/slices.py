"""`slices:` recipes: output layers merged from layer ranges of the inputs, as mergekit 0.1.5 plans them. This
module walks the slices (which output tensor comes from which source tensors); engine/section.py plans each
tensor as it plans those of a `models:` section.

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

from dataclasses import dataclass

from ..checkpoint import Component
from ..errors import RecipeError, ShapeMismatchError
from .parameters import LAYER_RE, count_layers
from .recipe import MergeSection, OutputSlice

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


@dataclass
class Walked:
    """One output tensor of a slice: its name, each source model's name for it, the slice, where it is in the
    recipe (for messages) and its gradient position t."""

    out_name: str
    names: dict[str, str]
    slice: OutputSlice
    at: str
    t: float


def walk_slices(section: MergeSection, comps: dict[str, Component], where: str
                ) -> tuple[list[Walked], list[tuple[str, int]]]:
    """Every output tensor of a `slices:` section in mergekit's order, and for each output layer the (model, layer)
    it follows in the config. Layer ranges past a model's layers and layers whose tensors differ between the
    sources of a slice are refused here."""
    reference = comps[section.base_model or section.slices[0].sources[0].model]
    layers = {r: layer_names(c) for r, c in comps.items()}
    walked: list[Walked] = []
    sources_of_layer: list[tuple[str, int]] = []
    outside = [n for n in reference.tensors if not LAYER_RE.search(n)]
    first, last = section.slices[0], section.slices[-1]
    for name in outside:
        if any(marker in name for marker in PRE_LAYER_MARKERS):
            walked.append(Walked(name, {s.model: name for s in first.sources}, first, f"{where}slices[0]", 0.0))
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
            out_layer = len(sources_of_layer)
            for template in templates:
                walked.append(Walked(template.format(out_layer),
                                     {s.model: template.format(s.layer_range[0] + i) for s in sl.sources}, sl, at, t))
            sources_of_layer.append((first_src.model, first_src.layer_range[0] + i))
    for name in outside:
        if not any(marker in name for marker in PRE_LAYER_MARKERS):
            walked.append(Walked(name, {s.model: name for s in last.sources}, last,
                                 f"{where}slices[{len(section.slices) - 1}]", 0.0))
    return walked, sources_of_layer


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
