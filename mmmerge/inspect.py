"""A summary of a checkpoint for people (`mmmerge inspect`) and for scripts (`--json`)."""

from __future__ import annotations

import re

from .checkpoint import Checkpoint, Component

# A sparse MoE layer's router, as transformers names it in Mixtral, Qwen2/3-MoE and Qwen3-VL-MoE language models:
# one row per routed expert.
ROUTER = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.gate\.weight$")

# Config fields worth showing, in this order, when a component's config has them.
SUMMARY_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_local_experts",
                  "num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
                  "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "image_size", "patch_size", "hidden_act",
                  "tie_word_embeddings", "projector_hidden_act", "vision_hidden_size", "text_hidden_size",
                  "vision_feature_layer", "vision_feature_select_strategy")


def experts_per_layer(c: Component) -> dict[int, int]:
    """layer -> number of routed experts, read from the routers' shapes (what the weights hold, not the config)."""
    found = {}
    for name, t in c.tensors.items():
        m = ROUTER.search(name)
        if m and len(t.shape) == 2:
            found[int(m.group(1))] = t.shape[0]
    return dict(sorted(found.items()))


def _ranges(layers: list[int]) -> str:
    runs, start = [], None
    for i, layer in enumerate(layers):
        start = layer if start is None else start
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            runs.append(f"{start}" if start == layer else f"{start}-{layer}")
            start = None
    return ", ".join(runs)


def format_experts(experts: dict[int, int], num_layers: int | None) -> str:
    """`experts: 3 in layers 0-1 (dense MLP in layer 2)`: each expert count with its layers, and the layers without."""
    counts = sorted(set(experts.values()))
    parts = [f"{n} in layer{'s' if len(ls) > 1 else ''} {_ranges(ls)}"
             for n in counts for ls in [[layer for layer, k in experts.items() if k == n]]]
    dense = [layer for layer in range(num_layers or 0) if layer not in experts]
    tail = f" (dense MLP in layer{'s' if len(dense) > 1 else ''} {_ranges(dense)})" if dense else ""
    return f"experts: {'; '.join(parts)}{tail}"


def component_summary(c: Component) -> dict:
    return {
        "architecture": c.arch,
        "config": {k: c.config[k] for k in SUMMARY_FIELDS if k in c.config},
        "parameters": c.num_params,
        "tensors": len(c.tensors),
        "dtypes": c.dtypes(),
        "extra_tensors": list(c.extra),
        "preprocess": c.preprocess,
        "experts_per_layer": experts_per_layer(c),
    }


def summary(ckpt: Checkpoint) -> dict:
    return {
        "path": str(ckpt.path),
        "format": ckpt.format,
        "components": {name: component_summary(c) for name, c in ckpt.components.items()},
        "not_in_components": dict(ckpt.outside_reasons),
        "not_in_components_parameters": sum(t.numel for t in ckpt.outside.values()),
        "whole_model": ckpt.whole,  # why it has no components (it merges whole), else None
    }


def format_summary(s: dict) -> str:
    lines = [f"{s['path']}", f"  format: {s['format']}"]
    if s.get("whole_model"):
        lines.append(f"  whole model, no components ({s['whole_model']}): merges tensor by tensor")
    for name, c in s["components"].items():
        if not c["tensors"] and name == "projector":  # Inkling's tower writes the language model's width itself
            lines.append("  projector: none (the vision tower writes the language model's width)")
            continue
        lines.append(f"  {name}: {c['architecture']}  {c['parameters']:,} parameters in {c['tensors']} tensors"
                     f"  ({', '.join(f'{d}: {n:,}' for d, n in c['dtypes'].items())})")
        if c["config"]:
            lines.append("    " + ", ".join(f"{k}={v}" for k, v in c["config"].items()))
        if c["experts_per_layer"]:
            lines.append("    " + format_experts(c["experts_per_layer"], c["config"].get("num_hidden_layers")))
        if c["extra_tensors"]:
            lines.append(f"    extra tensors (not held by {c['architecture']}): {', '.join(c['extra_tensors'])}")
        if c["preprocess"]:
            p = c["preprocess"]
            lines.append(f"    preprocess: {p['resize_mode']} resize to {p['resize'] or p['image_size']}, crop "
                         f"{p['image_size']}, {p['interpolation']}, mean {p['mean']}, std {p['std']}")
    if s["not_in_components"]:
        lines.append(f"  outside components ({s['not_in_components_parameters']:,} parameters):")
        lines.extend(f"    {prefix}*: {why}" for prefix, why in s["not_in_components"].items())
    return "\n".join(lines)


def inspect_path(path) -> dict:
    """The summary of a checkpoint, of an output mmmerge writes (LoRA, eval, search, statistics), or one line
    naming a file inside one of them or a folder of them."""
    from .adapters import open_checkpoint
    from .errors import UnknownFormatError
    from .inspect_outputs import one_line, output_summary

    try:
        return summary(open_checkpoint(path))
    except UnknownFormatError:
        found = output_summary(path)
        return found if found is not None else one_line(path)


def format_any(s: dict) -> str:
    from .inspect_outputs import format_output

    return format_summary(s) if "components" in s else format_output(s)


def describe(checkpoint) -> str:
    """What `mmmerge inspect` prints, for a path (a checkpoint, or an output mmmerge writes) or a loaded
    `Checkpoint` (`mmmerge.load`)."""
    if isinstance(checkpoint, Checkpoint):
        return format_summary(summary(checkpoint))
    return format_any(inspect_path(checkpoint))
