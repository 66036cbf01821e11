"""Write a component as a transformers folder that `from_pretrained` loads with no missing or unexpected keys.

The keys the architecture holds are taken from the class itself, built on the meta device from the
config, so nothing is guessed: a missing tensor is an error, a tensor the class cannot hold is left out
and reported to the caller.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from ..checkpoint import Component
from ..errors import MMMergeError, UnsupportedArchitectureError
from ..io.atomic import atomic_output_dir
from ..io.writer import DEFAULT_SHARD_BYTES, write_safetensors
from .preprocess import image_processor_config


def build_config(component: Component) -> transformers.PretrainedConfig:
    cfg = dict(component.config)
    model_type = cfg.pop("model_type")
    cfg.pop("architectures", None)
    return transformers.AutoConfig.for_model(model_type, **cfg)


def meta_model(component: Component) -> torch.nn.Module:
    """The architecture of `component`, with no memory behind its parameters."""
    cls = getattr(transformers, component.arch, None)
    if cls is None:
        raise UnsupportedArchitectureError(f"transformers has no class {component.arch}")
    with torch.device("meta"):
        return cls._from_config(build_config(component))


def expected_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys a checkpoint must hold: tied duplicates (e.g. a tied lm_head) are not required."""
    dupes = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return [k for k in model.state_dict() if k not in dupes]


def hf_config_dict(component: Component) -> dict:
    cfg = build_config(component).to_dict()
    cfg["architectures"] = [component.arch]
    return cfg


def save_hf(component: Component, out: Path, *, force: bool = False, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
            metadata: dict | None = None) -> list[str]:
    """Write config, weights and (for vision) the image processor config; return the names left out."""
    model = meta_model(component)
    expected = expected_keys(model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in component.tensors]
    if missing:
        raise MMMergeError(f"{component.arch}: tensor {missing[0]} is missing from the {component.name} component"
                           f" ({len(missing)} missing)")
    for k in expected:
        if tuple(component.tensors[k].shape) != shapes[k]:
            raise MMMergeError(f"{component.arch}: tensor {k} has shape {tuple(component.tensors[k].shape)},"
                               f" the config implies {shapes[k]}")
    keep = {k: component.tensors[k] for k in expected}
    left_out = [k for k in component.tensors if k not in keep and k not in shapes]
    with atomic_output_dir(out, force) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(component), indent=2) + "\n")
        write_safetensors(tmp, keep, max_shard_bytes=max_shard_bytes, metadata=metadata)
        if component.preprocess:
            (tmp / "preprocessor_config.json").write_text(json.dumps(image_processor_config(component.preprocess), indent=2) + "\n")
    return left_out
