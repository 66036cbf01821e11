"""Reading a peft LoRA folder: its config and, per target module, the lazy A and B factors and the scale.

peft saves `adapter_model.safetensors` (or `.bin`) with keys `base_model.model.<module>.lora_A.weight`,
`...lora_B.weight` (`lora_embedding_A/B` for embeddings, `lora_B.bias` with `lora_bias`), plus whole
tensors it carries (`modules_to_save`, saved embedding layers as `<module>.base_layer.weight`). A LoRA on a
Conv1d/2d/3d has lora_A a convolution of the layer's kernel (r, in, *kernel) and lora_B a 1-kernel one (out, r, 1, ...),
so its update is B @ A over A's flattened input and kernel, reshaped to the layer's (out, in, *kernel). The scale
of a module is alpha / r (alpha / sqrt(r) with rsLoRA), r and alpha taken from `rank_pattern` /
`alpha_pattern` with peft's own matching rule. Nothing is read beyond the config and the file header.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import LazyTensor
from ..errors import MMMergeError, ShapeMismatchError, UnreadableFileError
from ..io.reader import read_file, read_json

CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."


class AdapterMismatchError(MMMergeError):
    """An adapter does not fit the model it is applied to (or the adapters it is combined with)."""


@dataclass
class LoraModule:
    """One target module: delta = scale * B @ A, transposed into the weight's layout when `transpose`."""

    name: str  # the module's name in the model peft wrapped (no `base_model.model.`)
    A: LazyTensor  # (r, in); embeddings: (r, num_embeddings); convolutions: (r, in, *kernel)
    B: LazyTensor  # (out, r); embeddings: (dim, r); convolutions: (out, r, 1, ...)
    r: int
    alpha: float
    scale: float
    transpose: bool  # fan_in_fan_out (GPT-2 Conv1D) and embeddings store the weight as (in, out)
    embedding: bool = False
    bias: LazyTensor | None = None  # lora_B.bias: scale * bias is added to the module's bias

    @property
    def conv(self) -> bool:
        """A LoRA on an nn.Conv1d/2d/3d (its factors carry kernel dimensions)."""
        return len(self.A.shape) > 2

    @property
    def weight_shape(self) -> tuple[int, ...]:
        out, inp = self.B.shape[0], self.A.shape[1]
        if self.conv:
            return (out, inp, *self.A.shape[2:])
        return (inp, out) if self.transpose else (out, inp)

    def delta(self) -> torch.Tensor:
        """The float32 update of the module's weight, in the weight's own layout."""
        d = (self.B.load().float().flatten(1) @ self.A.load().float().flatten(1)) * self.scale
        if self.conv:  # peft's convolution of A by B's 1-kernel is this product, kernel position by position
            return d.reshape(self.weight_shape)
        return d.T if self.transpose else d


@dataclass
class LoraAdapter:
    path: Path
    file: Path
    config: dict
    modules: dict[str, LoraModule]
    whole: dict[str, LazyTensor] = field(default_factory=dict)  # parameter name -> tensor that replaces it


def pattern_value(patterns: dict, module: str, default):
    """peft's `get_pattern_key`: the first key that matches the end of the module name at a dot boundary."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def module_scale(config: dict, r: int, alpha: float) -> float:
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def adapter_file(path: Path) -> Path:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise UnreadableFileError(f"{path}: no adapter weights (looked for {', '.join(WEIGHT_FILES)})")


def read_config(path: Path) -> dict:
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise UnreadableFileError(f"{path}: not a peft adapter folder (no {CONFIG})")
    config = read_json(path / CONFIG)
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise UnreadableFileError(f"{path}/{CONFIG}: peft_type is {kind}; only LoRA adapters are supported")
    for key, what in (("use_dora", "DoRA"), ("target_parameters", "LoRA on nn.Parameter (target_parameters)"),
                      ("layer_replication", "layer_replication"), ("megatron_config", "Megatron layers")):
        if config.get(key):
            raise UnreadableFileError(f"{path}/{CONFIG}: {what} adapters are not supported")
    if not isinstance(config.get("r"), int) or isinstance(config["r"], bool) or config["r"] <= 0:
        raise UnreadableFileError(f"{path}/{CONFIG}: `r` must be a positive integer")
    check_config_types(config, path / CONFIG)
    return config


def check_config_types(config: dict, where: Path) -> None:
    """The fields mmmerge reads have peft's types (a module name is text, an alpha a number), so a hand-edited
    config is one line here rather than a TypeError deep in matching or scaling."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise UnreadableFileError(f"{where}: `target_modules` must be a module name pattern or a list of module "
                                  f"names (text), got {json.dumps(targets)[:80]}")
    if "lora_alpha" in config and not number(config["lora_alpha"]):
        raise UnreadableFileError(f"{where}: `lora_alpha` must be a number, got {json.dumps(config['lora_alpha'])[:40]}")
    for key in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(key)
        if patterns is not None and not (isinstance(patterns, dict) and all(number(v) for v in patterns.values())):
            raise UnreadableFileError(f"{where}: `{key}` must map module name patterns to numbers")


def read_adapter(path: Path) -> LoraAdapter:
    """A peft LoRA folder, lazily; a `.bin` is loaded with torch.load(weights_only=True) only."""
    path = Path(path)
    config = read_config(path)
    file = adapter_file(path)
    tensors = read_file(file)
    parts: dict[str, dict[str, LazyTensor]] = {}
    whole: dict[str, LazyTensor] = {}
    for key, t in tensors.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        m = re.match(r"(.+)\.(lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B)$", name)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = t
        elif re.search(r"\.lora_\w+", name):
            raise UnreadableFileError(f"{file}: tensor {key} is a LoRA part mmmerge does not know (DoRA or a newer "
                                      f"peft variant?)")
        else:
            whole[name.replace(".base_layer.", ".")] = t
    modules = {name: _module(name, p, config, file) for name, p in parts.items()}
    if not modules and not whole:
        raise UnreadableFileError(f"{file}: holds no LoRA tensors")
    return LoraAdapter(path, file, config, modules, whole)


def _module(name: str, p: dict[str, LazyTensor], config: dict, file: Path) -> LoraModule:
    embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
    a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight", "lora_B.weight")
    for k in (a_key, b_key):
        if k not in p:
            raise UnreadableFileError(f"{file}: module {name} has no {k} (the adapter file is incomplete)")
    A, B = p[a_key], p[b_key]
    conv = not embedding and 3 <= len(A.shape) <= 5 and len(B.shape) == len(A.shape) and set(B.shape[2:]) == {1}
    if not conv and (len(A.shape) != 2 or len(B.shape) != 2):
        raise UnreadableFileError(f"{file}: module {name}: lora_A of shape {tuple(A.shape)} and lora_B of shape "
                                  f"{tuple(B.shape)} are neither a LoRA on a Linear, Conv1D or Embedding layer nor "
                                  f"one on a Conv1d/2d/3d (lora_B of kernel 1)")
    r, alpha = _rank_and_alpha(config, name, file)
    if A.shape[0] != r or B.shape[1] != r:
        grouped = " (or a LoRA on a grouped convolution, which peft cannot merge either)" if conv else ""
        raise ShapeMismatchError(f"{file}: module {name}: factors {tuple(B.shape)} @ {tuple(A.shape)} do not have "
                                 f"rank r={r} from {CONFIG}{grouped}")
    transpose = embedding or (bool(config.get("fan_in_fan_out")) and not conv)  # peft ignores it on convolutions
    return LoraModule(name, A, B, r, alpha, module_scale(config, r, alpha), transpose, embedding,
                      p.get("lora_B.bias"))


def _rank_and_alpha(config: dict, name: str, file: Path) -> tuple[int, float]:
    """The module's rank and lora_alpha (its pattern entry, else the global one): a positive integer and a finite
    number (JSON allows NaN and Infinity, which would scale the update into NaN)."""
    r = pattern_value(config.get("rank_pattern") or {}, name, config["r"])
    alpha = pattern_value(config.get("alpha_pattern") or {}, name, config.get("lora_alpha", 8))
    where = f"{file.parent / CONFIG}: module {name}"
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r != int(r) or r < 1:
        raise UnreadableFileError(f"{where}: rank {r!r} is not a positive integer")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise UnreadableFileError(f"{where}: lora_alpha {alpha!r} is not a finite number")
    return int(r), float(alpha)
