"""Projector files: what fitting and training write, and every place a projector is read from.

A projector file is one safetensors file holding `linear_1.weight`, `linear_1.bias`, ... and, in its
metadata under `mmmerge.projector`, a JSON object with the type, sizes, the vision feature layer and
selection the projector was made for, and how it was made (fit residual, training losses ...).

`load_projector` reads that file, the projector of a transformers LLaVA folder, or an original LLaVA
`mm_projector.bin` (keys `model.mm_projector.0/2.*`, as LLaVA's pretraining stage writes it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UnknownFormatError, UnreadableFileError
from ..io.reader import read_file
from .modules import Projector, from_state_dict

METADATA_KEY = "mmmerge.projector"
FILE_NAME = "projector.safetensors"
ORIGINAL_NAMES = ("mm_projector.bin", "mm_projector.safetensors")
ORIGINAL_KEY = re.compile(r"^(?:model\.)?mm_projector\.(?:(\d+)\.)?(weight|bias)$")


@dataclass
class ProjectorSource:
    """A projector and what it was made for."""

    projector: Projector
    path: Path
    format: str  # "mmmerge" | "transformers-llava" | "llava-original"
    vision_feature_layer: int | list[int] | None = None
    vision_feature_select_strategy: str | None = None
    llava: Path | None = None  # the LLaVA folder it came from: its language model is the transfer source
    info: dict = field(default_factory=dict)


def save_projector(path: Path, projector: Projector, *, vision_feature_layer: int | list[int] | None = None,
                   vision_feature_select_strategy: str | None = None, info: dict | None = None) -> Path:
    """Write `projector` as one safetensors file (`path`, or `path/projector.safetensors` for a folder)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir() or not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        path = path / FILE_NAME
    meta = {"projector_type": projector.projector_type, "in_features": projector.in_features,
            "hidden_features": projector.hidden_features, "out_features": projector.out_features,
            "bias": projector.bias, "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy, **(info or {})}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in projector.state_dict().items()}
    if not tensors:  # identity: nothing to store but its size
        tensors = {"identity.size": torch.tensor([projector.in_features])}
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, tmp, metadata={"format": "pt", METADATA_KEY: json.dumps(meta)})
    tmp.replace(path)
    return path


def _metadata(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise UnreadableFileError(f"{path}: not a readable safetensors file ({e})") from e
    if METADATA_KEY not in meta:
        return None
    try:
        return json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise UnreadableFileError(f"{path}: metadata {METADATA_KEY} is not JSON ({e})") from e


def load_projector(path: Path) -> ProjectorSource:
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(f"{path}: no such file or folder")
    if path.is_dir():
        from ..adapters import hf_multimodal

        if hf_multimodal.detect(path):
            return _from_llava(path)
        for name in (FILE_NAME, *ORIGINAL_NAMES):
            if (path / name).is_file():
                return load_projector(path / name)
        raise UnknownFormatError(f"{path}: holds no projector (a LLaVA folder, {FILE_NAME} or mm_projector.bin)")
    if path.suffix == ".safetensors":
        meta = _metadata(path)
        if meta is not None:
            return _from_mmmerge(path, meta)
    return _from_original(path)


def _from_mmmerge(path: Path, meta: dict) -> ProjectorSource:
    tensors = {k: t.load() for k, t in read_file(path).items()}
    if meta.get("projector_type") == "identity":
        size = int(meta["in_features"])
        projector = Projector("identity", size, size)
    else:
        projector = from_state_dict(tensors, meta.get("projector_type"))
    known = {"projector_type", "in_features", "hidden_features", "out_features", "bias", "vision_feature_layer",
             "vision_feature_select_strategy"}
    return ProjectorSource(projector, path, "mmmerge", meta.get("vision_feature_layer"),
                           meta.get("vision_feature_select_strategy"), info={k: v for k, v in meta.items() if k not in known})


def _from_llava(path: Path) -> ProjectorSource:
    from ..adapters import open_checkpoint

    ckpt = open_checkpoint(path)
    if not ckpt.family.has_projector:
        raise UnknownFormatError(f"{path}: {ckpt.family.model_type} holds no projector (its vision tower writes the "
                                 "language model's width itself)")
    component = ckpt.component("projector")
    cfg = component.config
    tensors = {k: t.load() for k, t in component.tensors.items()}
    projector = from_state_dict(tensors, act=cfg.get("projector_hidden_act", "gelu"))
    return ProjectorSource(projector, path, "transformers-llava", cfg.get("vision_feature_layer"),
                           cfg.get("vision_feature_select_strategy"), llava=path)


def _from_original(path: Path) -> ProjectorSource:
    tensors = read_file(path)
    renamed = {}
    for k, t in tensors.items():
        m = ORIGINAL_KEY.match(k)
        if not m:
            continue
        index = int(m.group(1) or 0)
        if index % 2:
            raise UnreadableFileError(f"{path}: tensor {k} is not at a Linear position of LLaVA's projector")
        renamed[f"linear_{index // 2 + 1}.{m.group(2)}"] = t.load()
    if not renamed:
        raise UnknownFormatError(f"{path}: no projector tensors (expected {FILE_NAME} metadata or LLaVA's "
                                 "model.mm_projector.* keys)")
    projector = from_state_dict(renamed, act="gelu")
    # LLaVA's defaults: mm_vision_select_layer -2, mm_vision_select_feature 'patch' (drops the class token)
    return ProjectorSource(projector, path, "llava-original", -2, "default")
