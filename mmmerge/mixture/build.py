"""`mmmerge moe`: dense fine-tunes of one base -> a sparse MoE model, as mergekit-moe 0.1.5 writes it.

Everything is checked before any tensor data is read (config rules, architectures, shapes, the output's
tensors); then the gates are computed and the output is streamed tensor by tensor into a folder that replaces
`out` only when it is whole.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..adapters.families import family_of
from ..adapters.hf_common import class_layout
from ..adapters.hf_whole import architecture, has_vision_tower
from ..checkpoint import LazyTensor
from ..device import resolve_device
from ..engine.execute import progress_bar
from ..engine.opener import Opener
from ..engine.recipe import DTYPES, dtype_of
from ..errors import (MMMergeError, MMMergeWarning, RecipeError, ShapeMismatchError, UnreadableFileError,
                      UnsupportedArchitectureError)
from ..io import atomic_output_dir, claim_output, read_json, read_tensors, write_safetensors
from ..io.folder import copy_side_files
from ..io.writer import DEFAULT_SHARD_BYTES
from ..projectors.language import has_tokenizer
from ..validate import byte_size
from .architectures import LANGUAGE_PREFIX, OutputArch, choose
from .config import PROMPTED_MODES, MoEConfig, load_config
from .experts import PROJECTIONS, Source, expert_tensors, mlp_name, noise_states
from .gates import degenerate_layers, prompt_gates, random_gates

SIDE_FILES_SKIPPED = ("config.json", "README.md", "mergekit_config.yml", "mergekit_moe_config.yml",
                      "mmmerge_recipe.yml")


@dataclass
class Model:
    where: str          # its place in the config: base_model, experts[1], ...
    path: Path
    config: dict        # its config.json
    tensors: Mapping[str, LazyTensor]  # its (language model's) tensors, as the text-only causal LM names them
    language: dict      # the language model's config (a VLM's text config, else `config`)
    whole: Mapping[str, LazyTensor]    # every tensor, under its class's in-memory names (a VLM's too)


def read_model(path: Path) -> tuple[dict, Mapping[str, LazyTensor], dict, Mapping[str, LazyTensor]]:
    """A folder's config, language tensors, language config and whole tensors (headers only). A VLM of a family in
    mmmerge's table is read through its row: the language component under its text-only names."""
    config = read_json(path / "config.json")
    if family_of(config) is None and has_vision_tower(config) and isinstance(config.get("text_config"), dict):
        # a VLM mmmerge has no family row for (Qwen3.5): its language model where transformers 5 holds one
        whole = read_tensors(path)
        language = {"model." + k.removeprefix(LANGUAGE_PREFIX): t for k, t in whole.items()
                    if k.startswith(LANGUAGE_PREFIX)}
        return config, language, config["text_config"], whole
    if family_of(config) is None:
        tensors = read_tensors(path)
        return config, tensors, config, tensors
    from ..adapters.hf_multimodal import MEMORY, family_tensors, read

    ckpt = read(path)
    language = ckpt.components["language"]
    return config, language.tensors, language.config, {**family_tensors(ckpt.family, ckpt.components, MEMORY),
                                                         **ckpt.outside}


def open_models(config: MoEConfig, offline: bool | None) -> tuple[Model, list[Model], list[Model]]:
    """Base, experts and shared experts: their config.json and tensor headers (no tensor data)."""
    opener = Opener(config.folder, offline=offline)
    opened: dict[Path, tuple[dict, Mapping[str, LazyTensor]]] = {}

    def one(ref: str, where: str) -> Model:
        path = opener.path(ref)
        if not (path / "config.json").is_file():
            raise UnreadableFileError(f"{where}: {ref}: not a transformers model folder (no config.json)")
        if path not in opened:
            opened[path] = read_model(path)
        config, tensors, language, whole = opened[path]
        return Model(where, path, config, tensors, language, whole)

    base = one(config.base_model, "base_model")
    experts = [one(e.source_model, f"experts[{i}]") for i, e in enumerate(config.experts)]
    shared = [one(e.source_model, f"shared_experts[{i}]") for i, e in enumerate(config.shared)]
    return base, experts, shared


def check_architectures(base: Model, models: list[Model]) -> None:
    """Every expert is the base's architecture."""
    for m in models:
        if m.config.get("model_type") != base.config.get("model_type"):
            raise RecipeError(f"{m.where}: {m.path} is a {m.config.get('model_type')} model and the base a "
                              f"{base.config.get('model_type')} one; every expert must have the base's architecture")


def check_shapes(base: Model, models: list[Model]) -> None:
    """Every expert has the base's shape, and a dense MLP of the base's shape at every layer."""
    layers = base.language["num_hidden_layers"]
    for m in [base, *models]:
        for key in ("hidden_size", "num_hidden_layers"):
            if m.language.get(key) != base.language.get(key):
                raise ShapeMismatchError(f"{m.where}: {m.path} has {key} {m.language.get(key)}, the base "
                                         f"{base.language.get(key)}; every expert must have the base's shape")
        for layer in range(layers):
            for proj in PROJECTIONS:
                name = mlp_name(layer, proj)
                if name not in m.tensors:
                    raise ShapeMismatchError(f"{m.where}: {m.path} has no tensor {name}; an expert needs a dense MLP "
                                             "at every layer")
                if name in base.tensors and m.tensors[name].shape != base.tensors[name].shape:
                    raise ShapeMismatchError(f"{m.where}: tensor {name} has shape {m.tensors[name].shape}, the base's "
                                             f"{base.tensors[name].shape}; every expert must have the base's shape")


def check_tokenizer(config: MoEConfig, base: Model) -> None:
    """Gates from prompts tokenize them with the base's tokenizer: it must be there."""
    if config.gate_mode in PROMPTED_MODES and not has_tokenizer(base.path):
        raise UnreadableFileError(f"base_model: {base.path} has no tokenizer (tokenizer.json, tokenizer_config.json "
                                  f"...), which gate_mode {config.gate_mode} tokenizes the prompts with")


def image_files(config: MoEConfig) -> list[Path]:
    """The images of the prompts (relative paths are relative to the config file's folder)."""
    return [(config.folder or Path()) / p.image for e in [*config.experts, *config.shared] for p in e.image_prompts()]


def check_image_prompts(config: MoEConfig, base: Model) -> None:
    """Prompts with an image need a vision-language base, and image files that open within the size limit."""
    from ..images import image_size

    for path in image_files(config):
        if family_of(base.config) is None:
            raise RecipeError(f"base_model: {base.path} is a text model, and a prompt has an image ({path}); "
                              "prompts with an image need a vision-language base")
        if not path.is_file():
            raise UnreadableFileError(f"{path}: no such image file (an expert's prompt names it)")
        image_size(path)


def saved_dtype(config: dict) -> torch.dtype | None:
    """The dtype a config.json names (`dtype`, or transformers 4's `torch_dtype`), which mergekit-moe writes in
    when the config names none; None when it names none either (each tensor keeps its own)."""
    name = config.get("dtype") or config.get("torch_dtype")
    return dtype_of(name) if isinstance(name, str) and name.removeprefix("torch.") in DTYPES else None


def check_config_fields(row: OutputArch, config_class) -> None:
    """The MoE fields mmmerge sets are fields of the installed transformers' config class (asked, not assumed)."""
    import inspect

    known = {*inspect.signature(config_class.__init__).parameters, *getattr(config_class, "attribute_map", {})}
    missing = [k for k in [row.expert_count, "num_experts_per_tok", *row.fields, *row.intermediate_fields]
               if k not in known]
    if missing:
        raise UnsupportedArchitectureError(f"{row.class_name}: the installed transformers' {config_class.__name__} "
                                           f"has no field {', '.join(missing)}, which mmmerge sets")


def output_config(row: OutputArch, config: MoEConfig, base: Path, dtype: torch.dtype | None):
    """The output's transformers config: the base's, through the row's config class, with its MoE fields (in its
    text config for a VLM row, whose other settings stay the base's)."""
    from transformers import CONFIG_MAPPING, AutoConfig

    cfg = AutoConfig.from_pretrained(base)
    if row.via and cfg.model_type != row.via:
        cfg = CONFIG_MAPPING[row.via](**cfg.to_dict())
    out_class = CONFIG_MAPPING[row.model_type]
    if row.text_config:
        text_class = out_class.sub_configs[row.text_config]
        check_config_fields(row, text_class)
        whole = cfg.to_dict()
        dense = {k: v for k, v in whole[row.text_config].items() if k != "model_type"}
        # the top-level flag ties the head in the VLM class; the MoE text config's own default (True) must not differ
        text = text_class(**{**dense, "tie_word_embeddings": whole.get("tie_word_embeddings", True)})
    else:
        check_config_fields(row, out_class)
        text = out = out_class(**cfg.to_dict())
    setattr(text, row.expert_count, len(config.experts))
    text.num_experts_per_tok = config.experts_per_token
    for key, value in row.fields.items():
        setattr(text, key, value)
    for key in row.intermediate_fields:
        setattr(text, key, text.intermediate_size)
    if row.text_config:
        out = out_class(**{**whole, row.text_config: text.to_dict()})
    out.architectures = [row.class_name]
    if dtype is not None:
        out.dtype = dtype
    return out


def class_shapes(row: OutputArch, out_config) -> dict[str, tuple[int, ...]]:
    """The output class's in-memory tensors and their shapes, from the class built on the meta device."""
    from ..adapters.hf_export import model_class

    with torch.device("meta"):
        return {n: tuple(t.shape) for n, t in model_class(row.class_name)._from_config(out_config).state_dict().items()}


def check_against_class(row: OutputArch, tensors: Mapping[str, LazyTensor], shapes: dict) -> None:
    """Every planned output tensor the class holds has the class's shape (the experts' fusing and transposition
    too), before any tensor is read."""
    for name, t in tensors.items():
        if name in shapes and tuple(t.shape) != shapes[name]:
            raise ShapeMismatchError(f"{row.class_name}: the installed transformers holds {name} as {shapes[name]}, "
                                     f"and mmmerge would write {tuple(t.shape)}; this output is not written")


def check_nothing_dropped(row: OutputArch, shapes: dict, base: Model) -> None:
    """A VLM output's class holds every tensor of the dense base's class outside the language model's MLPs
    (GLM-4.5V's MoE layers lack GLM-4.1V's extra norms): nothing the base computes with is dropped silently. Text
    outputs keep mergekit-moe's rules."""
    if not row.text_config:
        return
    layers = row.names.router.split("{layer}")[0]
    held = set(base.whole)
    try:
        layout = class_layout(architecture(base.config), base.config)
        held &= {*layout["required"], *layout["optional"]}  # not stray buffers of old checkpoints (inv_freq)
    except MMMergeError:
        pass
    lost = [n for n in base.whole if n in held and n not in shapes and not (n.startswith(layers) and ".mlp." in n)]
    if lost:
        raise UnsupportedArchitectureError(
            f"base_model: {base.path}: {row.class_name} holds no {lost[0]} ({len(lost)} such tensor(s) of the "
            f"{base.config.get('model_type')} base), so its MoE counterpart in transformers is another architecture "
            "and would drop them; this output is not written")


def base_tensors(row: OutputArch, shapes: dict, out_config, base: Model, dtype: torch.dtype | None) -> dict[str, LazyTensor]:
    """The output's tensors outside the MLPs (those its class holds), from the base (a VLM's vision tower and
    projector too); q/k/v biases the base lacks are zeros where the row says so (Qwen2-MoE from Llama/Mistral),
    a tied head the base lacks stays out."""
    layers = row.names.router.split("{layer}")[0]  # the language model's layers: their MLPs are the experts'
    names = [n for n in shapes if not (n.startswith(layers) and ".mlp." in n)]
    out = {}
    for name in names:
        t = base.whole.get(name)
        if t is not None:
            out[name] = LazyTensor(t.shape, dtype or t.dtype, t.load)
        elif row.zero_attention_bias and name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            heads = out_config.num_attention_heads if name.endswith("q_proj.bias") else out_config.num_key_value_heads
            size = heads * (out_config.hidden_size // out_config.num_attention_heads)
            out[name] = LazyTensor((size,), dtype or torch.float32, lambda size=size: torch.zeros(size))
        elif name == "lm_head.weight" and getattr(out_config, "tie_word_embeddings", False):
            continue
        else:
            raise UnreadableFileError(f"base_model: {base.path} has no tensor {name}, which {row.class_name} holds")
    return out


def gate_tensors(row: OutputArch, gates: torch.Tensor, experts: int, dtype: torch.dtype | None) -> dict[str, LazyTensor]:
    """Each layer's router (the routed experts' rows) and, where `gates` has rows beyond them (the shared
    expert's, Qwen2-MoE), the shared expert's gate."""
    out = {}
    for layer in range(gates.shape[0]):
        parts = {row.names.router: gates[layer, :experts]}
        if gates.shape[1] > experts and row.names.shared_router:
            parts[row.names.shared_router] = gates[layer, experts:]
        for name, value in parts.items():
            out[name.format(layer=layer)] = LazyTensor.of(value.to(dtype or value.dtype).contiguous())
    return out


def moe(config, out, *, random_seed: int | None = None, i_understand_this_is_not_useful_without_training: bool = False,
        device: str = "cpu", force: bool = False, quiet: bool = False, offline: bool | None = None,
        out_shard_size: int | str = DEFAULT_SHARD_BYTES) -> Path:
    """Write the MoE model of a mergekit-moe config (a YAML file, YAML text or a dict) to `out`; returns `out`.
    `random_seed` and `i_understand_this_is_not_useful_without_training` are mergekit-moe's options of those
    names (also read as config keys); `device` runs the base for hidden gates."""
    cfg = load_config(config, random_seed=random_seed, i_understand_this_is_not_useful_without_training=(
        True if i_understand_this_is_not_useful_without_training else None))
    dev = resolve_device(device)
    shard_bytes = byte_size("out_shard_size", out_shard_size)
    out = Path(out)
    with claim_output(out, force=force, deferred_check=True):
        base, experts, shared = open_models(cfg, offline)
        check_architectures(base, [*experts, *shared])
        row = choose(cfg, base.config.get("model_type"))
        dtype = dtype_of(cfg.dtype) or saved_dtype(base.config)
        out_config = output_config(row, cfg, base.path, dtype)
        shapes = class_shapes(row, out_config)
        check_nothing_dropped(row, shapes, base)
        check_shapes(base, [*experts, *shared])
        check_tokenizer(cfg, base)
        check_image_prompts(cfg, base)
        tensors = base_tensors(row, shapes, out_config, base, dtype)
        layers = base.language["num_hidden_layers"]
        sources = [Source(e, m.tensors) for e, m in zip(cfg.experts, experts)]
        shared_sources = [Source(e, m.tensors) for e, m in zip(cfg.shared, shared)]
        check_against_class(row, {**tensors, **expert_tensors(row, layers, sources, shared_sources, {}, dtype)}, shapes)
        inputs = [m.path for m in [base, *experts, *shared]]
        with atomic_output_dir(out, force, inputs=inputs, data=[cfg.path, *image_files(cfg)]) as tmp:
            start = time.perf_counter()
            generator = torch.Generator()
            if cfg.random_seed is not None:
                generator.manual_seed(cfg.random_seed)
            else:
                generator.seed()
            gated = cfg.gated()
            if cfg.gate_mode in PROMPTED_MODES:
                gates = prompt_gates(cfg.gate_mode, gated, base.path, num_layers=layers, device=dev,
                                     embed=lambda: base.tensors["model.embed_tokens.weight"].load(),
                                     vlm=row.text_config is not None, folder=cfg.folder)
            else:
                gates = random_gates(cfg.gate_mode, (layers, len(gated), base.language["hidden_size"]), generator)
            degenerate = degenerate_layers(gates)
            if degenerate:
                warnings.warn(f"the gates of {len(degenerate)} of {layers} layer(s) (from layer {degenerate[0]}) are "
                              "nearly degenerate (condition number above 5): some experts' prompts are too alike, "
                              "and those experts will be underused", MMMergeWarning, stacklevel=2)
            states = noise_states(row, layers, sources, shared_sources, generator)
            tensors |= expert_tensors(row, layers, sources, shared_sources, states, dtype)
            tensors |= gate_tensors(row, gates, len(cfg.experts), dtype)
            copy_side_files(base.path, tmp, skip=SIDE_FILES_SKIPPED)
            out_config.save_pretrained(tmp)
            (tmp / "mergekit_moe_config.yml").write_text(cfg.text)
            bar, on_tensor = progress_bar(sum(t.nbytes for t in tensors.values()), len(tensors), quiet)
            with bar:
                write_safetensors(tmp, tensors, max_shard_bytes=shard_bytes, on_tensor=on_tensor)
    if not quiet:
        print(f"wrote a {row.name} model of {len(cfg.experts)} experts ({row.class_name}, {cfg.gate_mode} gates) "
              f"to {out} in {time.perf_counter() - start:.1f} s")
    return out
