"""Write a component as a transformers folder that `from_pretrained` loads with no missing or unexpected keys.

Canonical tensor names are the *file* layout of the architecture: what `save_pretrained` writes and hub
checkpoints hold (e.g. ViT's `encoder.layer.N.attention.attention.query`, LLaVA's `language_model.model.*`),
not the in-memory names transformers 5 renames them to on load, which change between releases. The
layout is taken from the class itself, built on the meta device from the config and passed through
transformers' own save-time renaming, so nothing is guessed: a missing tensor is an error, a tensor
the class cannot hold is left out and reported to the caller.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..checkpoint import Component
from ..errors import UnreadableFileError, UnsupportedArchitectureError
from ..io.check import check_tensors
from ..io.folder import write_model_folder
from ..io.writer import DEFAULT_SHARD_BYTES
from .families import VISION_MODULES
from .preprocess import image_processor_config


def model_class(arch: str) -> type:
    """A transformers model class by name: exported at the top level, or defined in a family's modeling
    module (Qwen2-VL's vision class is not exported); a module that is no model class is refused."""
    import transformers

    cls = getattr(transformers, arch, None)
    module = VISION_MODULES.get(arch)  # known once the family row that names the class has been looked up
    if cls is None and module:
        cls = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), arch, None)
    if cls is None:
        raise UnsupportedArchitectureError(f"transformers has no class {arch}")
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):  # IDEFICS' vision transformer
        raise UnsupportedArchitectureError(f"{arch} is no transformers model class: transformers builds it only inside "
                                           "its family's model, so it is written only within the whole model")
    return cls


def build_config(component: Component) -> transformers.PretrainedConfig:
    """The component's config object: its class's own config class where it has one (so a text config of a
    multimodal family builds its text-only class), else the auto class of its model_type."""
    import transformers

    cfg = decoded(component.config)
    model_type = cfg.pop("model_type")
    cfg.pop("architectures", None)
    config_class = getattr(model_class(component.arch), "config_class", None)
    try:
        if config_class is not None and getattr(config_class, "model_type", None) == model_type:
            return config_class(**cfg)
        return transformers.AutoConfig.for_model(model_type, **cfg)
    except config_errors() as e:  # a field of the wrong type (`hidden_size: "32"`), or a value transformers refuses
        raise UnreadableFileError(f"its {component.arch} config is invalid ({' '.join(str(e).split())[:200]})") from e


def config_errors() -> tuple[type[BaseException], ...]:
    """What building a transformers config from bad values raises (huggingface_hub's strict dataclasses check
    field types in transformers 5)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return TypeError, ValueError
    return TypeError, ValueError, StrictDataclassError


def meta_model(component: Component) -> torch.nn.Module:
    """The architecture of `component`, with no memory behind its parameters."""
    cls = model_class(component.arch)
    with torch.device("meta"):
        return cls._from_config(build_config(component))


def class_on_meta(arch: str, config_json: str) -> torch.nn.Module:
    """The class `arch` built on the meta device (no memory, no initialisation) from a config.json's text."""
    import json

    config = decoded(json.loads(config_json))
    config.pop("architectures", None)
    klass = model_class(arch)
    with torch.device("meta"):
        return klass._from_config(klass.config_class.from_dict(config))


def decoded(config: dict) -> dict:
    """A config.json's dict with the floats JSON cannot hold decoded as transformers' own loader decodes them
    ({"__float__": "Infinity"}, as it saves nemotron_h_omni's time_step_limit)."""
    import transformers

    decode = getattr(transformers.PretrainedConfig, "_decode_special_floats", None)
    return dict(decode(dict(config)) if decode else config)


def tied_duplicates(model: torch.nn.Module) -> set[str]:
    """The names of tensors that alias another, as transformers' save path leaves them out: by the ties the class
    declares (Diffusion Gemma's files hold its decoder's names, not the text encoder's that torch lists first), else,
    where transformers does not say, every alias after the first in module order."""
    in_order = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError:
        return in_order
    state = model.state_dict()
    try:
        return set(state) - set(remove_tied_weights_from_state_dict(dict(state), model))
    except RuntimeError:  # aliases the class does not declare: transformers refuses to save them
        return in_order


def memory_layout(model: torch.nn.Module) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required, optional): the model's in-memory tensor names -> shapes; optional are tied duplicates."""
    dupes = tied_duplicates(model)
    state = model.state_dict()
    return ({k: tuple(v.shape) for k, v in state.items() if k not in dupes},
            {k: tuple(v.shape) for k, v in state.items() if k in dupes})


def file_layout(model: torch.nn.Module) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required, optional): tensor name -> shape as a checkpoint file of this model holds them.

    Optional tensors are tied duplicates (the lm_head of tied embeddings): files may hold them or not.
    """
    dupes = tied_duplicates(model)
    state = model.state_dict()
    required = to_file_names(model, {k: v for k, v in state.items() if k not in dupes})
    optional = to_file_names(model, {k: v for k, v in state.items() if k in dupes})
    return ({k: tuple(v.shape) for k, v in required.items()}, {k: tuple(v.shape) for k, v in optional.items()})


def to_file_names(model: torch.nn.Module, state: dict) -> dict:
    """transformers' own save-time renaming (in-memory names -> file names)."""
    if not state:
        return {}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers without load-time renaming: the names are the file names
        return state
    return revert_weight_conversion(model, state)


def hf_config_dict(component: Component) -> dict:
    cfg = build_config(component).to_dict()
    cfg["architectures"] = [component.arch]
    return cfg


def save_hf(component: Component, out: Path, *, force: bool = False, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
            metadata: dict | None = None) -> list[str]:
    """Write config, weights and (for vision) the image processor config; return the names left out."""
    model = meta_model(component)
    required, optional = file_layout(model)
    in_memory = memory_layout(model)
    if any(k not in component.tensors for k in required) and all(k in component.tensors for k in in_memory[0]):
        required, optional = in_memory  # experts read fused (fused_experts.py), which transformers 5 loads too
    check_tensors(required, component.tensors, component.arch, optional=optional, allow_unexpected=True,
                  expected_from=f"{component.arch} with this config", got_from=f"the {component.name} component")
    keep = {k: component.tensors[k] for k in required}
    left_out = [k for k in component.tensors if k not in required and k not in optional]
    files = {"preprocessor_config.json": image_processor_config(component.preprocess)} if component.preprocess else {}
    write_model_folder(out, keep, hf_config_dict(component), force=force, files=files, max_shard_bytes=max_shard_bytes,
                       metadata=metadata)
    return left_out
