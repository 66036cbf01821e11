"""transformers vision encoders: CLIP and SigLIP towers (also inside a full CLIP/SigLIP), DINOv2, ViT.

The canonical architecture is the bare vision model (`CLIPVisionModel`, `SiglipVisionModel`,
`Dinov2Model`, `ViTModel`); its tensors are found under whichever prefix the file uses (flat as
transformers 5 saves them, `vision_model.` as older saves and full models do, `vit.`/`dinov2.` inside
task heads). A full CLIP's `visual_projection` travels as an extra tensor; the text tower and task
heads are kept aside and reported.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint
from ..io.folder import write_model_folder
from ..io.reader import read_folder, read_json
from .hf_common import auto_class_names, describe_outside, leftovers, read_config, take_component
from .preprocess import RESAMPLE_NAMES, make_preprocess

FORMAT = "transformers-vision"
DESCRIPTION = "transformers vision folder (CLIP, SigLIP, DINOv2, ViT; full CLIP/SigLIP too)"

# model_type -> (vision model_type, prefixes to try, extra tensors kept with the tower)
VISION_TYPES = {
    "clip_vision_model": ("clip_vision_model", ("", "vision_model."), ()),
    "siglip_vision_model": ("siglip_vision_model", ("", "vision_model."), ()),
    "clip": ("clip_vision_model", ("vision_model.",), ("visual_projection.weight",)),
    "siglip": ("siglip_vision_model", ("vision_model.",), ()),
    "dinov2": ("dinov2", ("", "dinov2."), ()),
    "dinov2_with_registers": ("dinov2_with_registers", ("", "dinov2_with_registers."), ()),
    "vit": ("vit", ("", "vit."), ()),
}


def detect(path: Path) -> bool:
    if not Path(path).is_dir():
        return False
    cfg = read_config(path)
    return bool(cfg) and "architecture" not in cfg and cfg.get("model_type") in VISION_TYPES


def vision_config(cfg: dict) -> dict:
    """The vision tower's own config dict (the `vision_config` of a full CLIP/SigLIP)."""
    vtype = VISION_TYPES[cfg["model_type"]][0]
    vcfg = dict(cfg.get("vision_config") or cfg) if vtype != cfg["model_type"] else dict(cfg)
    vcfg["model_type"] = vtype
    vcfg.pop("architectures", None)
    return vcfg


def read_preprocess(path: Path) -> dict | None:
    """The neutral preprocessing form from a CLIP/SigLIP/ViT-style `preprocessor_config.json` (or the
    `image_processor` inside a `processor_config.json`, where transformers 5 processors save it)."""
    file, combined = Path(path) / "preprocessor_config.json", Path(path) / "processor_config.json"
    if file.is_file():
        p = read_json(file)
    else:
        p = read_json(combined).get("image_processor") if combined.is_file() else None
        if not isinstance(p, dict):
            return None
    size, crop = p.get("size") or {}, p.get("crop_size")
    interp = RESAMPLE_NAMES.get(p.get("resample", 3), "bicubic")
    mean, std = p.get("image_mean", [0.5] * 3), p.get("image_std", [0.5] * 3)
    if "shortest_edge" in size and p.get("do_center_crop", True) and crop:
        return make_preprocess((crop["height"], crop["width"]), mean, std, interp, "shortest", size["shortest_edge"])
    if "height" in size:
        return make_preprocess((size["height"], size["width"]), mean, std, interp, "squash")
    return None


def read(path: Path) -> Checkpoint:
    path = Path(path)
    cfg = read_config(path)
    vcfg = vision_config(cfg)
    _, prefixes, extras = VISION_TYPES[cfg["model_type"]]
    arch = auto_class_names("MODEL_MAPPING_NAMES")[vcfg["model_type"]]
    tensors = read_folder(path)
    vision, prefix = take_component("vision", arch, vcfg, tensors, prefixes, path, read_preprocess(path))
    used = {prefix + k for k in vision.tensors}
    for name in extras:
        if name in tensors:
            vision.tensors[name] = tensors[name]
            vision.extra += (name,)
            used.add(name)
    outside = leftovers(tensors, used)
    source = {"config.json": cfg, "prefix": prefix}
    return Checkpoint(path, FORMAT, {"vision": vision}, describe_outside(outside, f"not part of the {arch} tower"), outside, source,
                      side_files=path)


def write_source(checkpoint: Checkpoint, out: Path, force: bool = False) -> None:
    """The folder again, tower tensors under the prefix they were read with."""
    vision = checkpoint.component("vision")
    prefix = checkpoint.source_config["prefix"]
    tensors = {(k if k in vision.extra else prefix + k): v for k, v in vision.tensors.items()}
    write_model_folder(out, {**tensors, **checkpoint.outside}, checkpoint.source_config["config.json"], force=force,
                       side_files=checkpoint.path)
