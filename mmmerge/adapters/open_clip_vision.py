"""open_clip hub folders: the vision tower as `CLIPVisionModel` (open_clip ViT) or via `timm_vision` (timm trunk).

open_clip reads `local-dir:PATH` as `open_clip_config.json` (model_cfg + preprocess_cfg) plus one weight
file. The vision tower lives under `visual.`: an open_clip VisionTransformer maps here, a timm trunk
(`visual.trunk.`, SigLIP or a CLIP-style ViT) through `timm_vision.vit_from_timm`. The text tower and the
logit scale/bias stay in `Checkpoint.outside`, untouched, so `write_source` gives back the same tensors.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..checkpoint import Checkpoint, Component, LazyTensor, chunk, concat
from ..errors import UnreadableFileError, UnsupportedArchitectureError
from ..io import read_file, read_json
from ..io.check import check_tensors
from ..io.folder import write_model_folder
from ..io.writer import ONE_FILE
from .hf_export import meta_model
from .preprocess import make_preprocess
from .timm_vision import vit_from_timm, vit_to_timm

FORMAT = "open_clip"
DESCRIPTION = "open_clip hub folder (open_clip_config.json + open_clip_model.safetensors or open_clip_pytorch_model.bin)"

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"  # what write_source writes
# open_clip's own preference (factory._find_checkpoint_in_dir); otherwise the first weight file, safetensors first.
PREFERRED_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                     "pytorch_model.bin", "pytorch_model.pth", "model.pth")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROJECTION = "visual_projection.weight"
# CLIPVisionCfg options that the mapping reads or that do not change eval-time math; any other option must keep
# open_clip's default.
# A LayerNorm per token commutes with taking the class token, so final_ln_after_pool is the same math here.
HANDLED = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "patch_dropout", "pos_embed_type",
           "attn_pooler_queries", "attn_pooler_heads", "norm_kwargs", "block_type", "final_ln_after_pool",
           "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop",
           "timm_drop_path"}
SIZES = ("layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size")  # positive numbers (or lists)
ALLOWED = {"block_type": (None, "default"), "pos_embed_type": ("learnable", "sin_cos_2d")}  # sin-cos: a fixed table


def detect(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def read(path: Path) -> Checkpoint:
    folder = Path(path)
    config = read_json(folder / CONFIG)
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("vision_cfg"), dict):
        raise UnreadableFileError(f"{folder / CONFIG}: has no model_cfg.vision_cfg object (open_clip needs both)")
    vision_cfg = _vision_cfg(folder, model_cfg["vision_cfg"])
    pre = preprocess(folder, config, vision_cfg["image_size"])
    weights = weights_file(folder)
    tensors = read_file(weights)
    visual = {k.removeprefix("visual."): t for k, t in tensors.items() if k.startswith("visual.")}
    outside = {k: t for k, t in tensors.items() if not k.startswith("visual.")}
    reasons = {_prefix(k): ("contrastive loss scale, not part of the vision tower" if k.startswith("logit_")
                            else "text tower: mmmerge reads only the vision tower of an open_clip model")
               for k in outside}
    if vision_cfg["timm_model_name"]:
        vision, inert = _read_timm(folder, weights, model_cfg, vision_cfg, visual, pre)
        outside |= inert
        reasons |= {k: "zero bias of the timm head; visual_projection.weight holds its weight" for k in inert}
    else:
        vision = _read_vit(folder, weights, model_cfg, vision_cfg, visual, pre)
    return Checkpoint(folder, FORMAT, {"vision": vision}, reasons, outside, source_config=config)


def write_source(checkpoint: Checkpoint, out: Path, force: bool = False) -> None:
    """The open_clip folder back: its config, non-weight files (tokenizer), one safetensors file."""
    vision = checkpoint.component("vision")
    if checkpoint.source_config["model_cfg"]["vision_cfg"].get("timm_model_name"):
        visual = {f"trunk.{k}": t for k, t in vit_to_timm(vision).items()}
    elif vision.arch == "CLIPVisionModel":
        visual = vit_to_source(vision.tensors, vision.config["num_hidden_layers"])
    else:
        raise UnsupportedArchitectureError(f"{checkpoint.path}: cannot write a {vision.arch} vision tower as open_clip")
    tensors = {f"visual.{k}": t for k, t in visual.items()} | dict(checkpoint.outside)
    write_model_folder(out, tensors, checkpoint.source_config, force=force, config_name=CONFIG,
                       side_files=checkpoint.path, prefix=WEIGHTS.removesuffix(".safetensors"), max_shard_bytes=ONE_FILE)


def weights_file(folder: Path) -> Path:
    for name in PREFERRED_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted((p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth")),
                   key=lambda p: (p.suffix != ".safetensors", p.name))
    if not found:
        raise UnreadableFileError(f"{folder}: no open_clip weights (looked for {', '.join(PREFERRED_WEIGHTS[:3])})")
    return found[0]


def preprocess(folder: Path, config: dict, image_size) -> dict:
    """Eval transform of `open_clip.create_model_and_transforms`: its defaults under preprocess_cfg, size = tower's."""
    cfg = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
    cfg.update({k: v for k, v in (config.get("preprocess_cfg") or {}).items() if v is not None})
    if cfg["resize_mode"] not in ("shortest", "squash"):
        raise UnsupportedArchitectureError(f"{folder / CONFIG}: preprocess_cfg resize_mode {cfg['resize_mode']!r} "
                                           "(letterbox padding) has no transformers image processor")
    mean, std = ([x] * 3 if isinstance(x, (int, float)) else x for x in (cfg["mean"], cfg["std"]))
    # open_clip's eval transform takes anything but 'bilinear' as bicubic
    interpolation = "bilinear" if cfg["interpolation"] == "bilinear" else "bicubic"
    return make_preprocess(image_size, mean, std, interpolation, cfg["resize_mode"])


def _vision_cfg(folder: Path, vision_cfg: dict) -> dict:
    """vision_cfg with open_clip's defaults filled in; refuses options the canonical architectures cannot express."""
    from open_clip.model import CLIPVisionCfg

    defaults = dataclasses.asdict(CLIPVisionCfg())
    unknown = sorted(set(vision_cfg) - set(defaults))
    if unknown:
        raise UnsupportedArchitectureError(f"{folder / CONFIG}: unknown vision_cfg option {unknown[0]!r}")
    cfg = defaults | vision_cfg
    for key in SIZES:  # a width of "32" would fail deep in arithmetic or in transformers' config
        values = cfg[key] if isinstance(cfg[key], (list, tuple)) else [cfg[key]]
        if key in vision_cfg and not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                         for v in values):
            raise UnreadableFileError(f"{folder / CONFIG}: vision_cfg {key} must be a positive number, got "
                                      f"{json.dumps(cfg[key])[:40]}")
    timm = bool(cfg["timm_model_name"])
    for key, default in defaults.items():  # a timm tower ignores the ViT options
        if not timm and key not in HANDLED and cfg[key] != default:
            raise UnsupportedArchitectureError(f"{folder / CONFIG}: vision_cfg {key}={cfg[key]!r} is not supported "
                                               "(no transformers vision model computes it)")
    size = cfg["image_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise UnsupportedArchitectureError(f"{folder / CONFIG}: vision_cfg image_size {size} is not square")
        cfg["image_size"] = size[0]
    if timm:
        return cfg
    if isinstance(cfg["layers"], (list, tuple)):
        raise UnsupportedArchitectureError(f"{folder / CONFIG}: vision_cfg layers={cfg['layers']} is a ModifiedResNet")
    patch = cfg["patch_size"]
    if isinstance(patch, (list, tuple)):
        if len(patch) != 2 or patch[0] != patch[1]:
            raise UnsupportedArchitectureError(f"{folder / CONFIG}: vision_cfg patch_size {patch} is not square")
        cfg["patch_size"] = patch[0]
    for key, allowed in ALLOWED.items():
        if cfg[key] not in allowed:
            raise UnsupportedArchitectureError(f"{folder / CONFIG}: vision_cfg {key}={cfg[key]!r} is not supported")
    if set(cfg["norm_kwargs"] or {}) - {"eps"}:
        raise UnsupportedArchitectureError(f"{folder / CONFIG}: vision_cfg norm_kwargs={cfg['norm_kwargs']} "
                                           "(only eps is supported)")
    return cfg


# ---- open_clip VisionTransformer <-> CLIPVisionModel ------------------------------------------------------------

def _renames(layers: int) -> dict[str, str]:
    """open_clip name (under `visual.`) -> CLIPVisionModel name, for every tensor copied as it is."""
    names = {"conv1.weight": "embeddings.patch_embedding.weight", "class_embedding": "embeddings.class_embedding",
             "positional_embedding": "embeddings.position_embedding.weight"}
    block = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for p in ("weight", "bias"):
        names[f"ln_pre.{p}"] = f"pre_layrnorm.{p}"
        names[f"ln_post.{p}"] = f"post_layernorm.{p}"
        for i in range(layers):
            for src, dst in block.items():
                names[f"transformer.resblocks.{i}.{src}.{p}"] = f"encoder.layers.{i}.{dst}.{p}"
    return names


def _transpose(t: LazyTensor) -> LazyTensor:
    return t.derive(lambda x: x.t().contiguous(), t.shape[::-1])


def vit_from_source(visual: dict[str, LazyTensor], layers: int) -> dict[str, LazyTensor]:
    """open_clip `visual.*` tensors (prefix removed) -> CLIPVisionModel tensors + `visual_projection.weight`."""
    out = {dst: visual[src] for src, dst in _renames(layers).items()}
    for i in range(layers):
        for p in ("weight", "bias"):
            q, k, v = chunk(visual[f"transformer.resblocks.{i}.attn.in_proj_{p}"], 3)
            out.update({f"encoder.layers.{i}.self_attn.{n}_proj.{p}": t for n, t in zip("qkv", (q, k, v))})
    out[PROJECTION] = _transpose(visual["proj"])
    return out


def vit_to_source(tensors: dict[str, LazyTensor], layers: int) -> dict[str, LazyTensor]:
    """The inverse of `vit_from_source`."""
    out = {src: tensors[dst] for src, dst in _renames(layers).items()}
    for i in range(layers):
        for p in ("weight", "bias"):
            qkv = [tensors[f"encoder.layers.{i}.self_attn.{n}_proj.{p}"] for n in "qkv"]
            out[f"transformer.resblocks.{i}.attn.in_proj_{p}"] = concat(qkv)
    out["proj"] = _transpose(tensors[PROJECTION])
    return out


def _read_vit(folder, weights, model_cfg, cfg, visual, pre) -> Component:
    width, layers = cfg["width"], cfg["layers"]
    config = {
        "model_type": "clip_vision_model", "hidden_size": width, "intermediate_size": int(width * cfg["mlp_ratio"]),
        "num_hidden_layers": layers, "num_attention_heads": width // cfg["head_width"], "num_channels": 3,
        "image_size": cfg["image_size"], "patch_size": cfg["patch_size"],
        "hidden_act": "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu",
        "layer_norm_eps": (cfg["norm_kwargs"] or {}).get("eps", 1e-5), "projection_dim": model_cfg["embed_dim"],
    }
    component = Component("vision", "CLIPVisionModel", config, {}, pre, extra=(PROJECTION,))
    # Shapes the config implies, from transformers' own class, carried back to open_clip names by the mapping.
    implied = {k: LazyTensor(tuple(v.shape), v.dtype, None) for k, v in meta_model(component).state_dict().items()}
    implied[PROJECTION] = LazyTensor((model_cfg["embed_dim"], width), torch.float32, None)
    _check_shapes(weights, {k: t.shape for k, t in vit_to_source(implied, layers).items()}, visual)
    component.tensors = vit_from_source(visual, layers)
    return component


# ---- open_clip TimmModel (SigLIP, CLIP-style timm ViT) -----------------------------------------------------------

def _read_timm(folder, weights, model_cfg, cfg, visual, pre) -> tuple[Component, dict[str, LazyTensor]]:
    """The trunk through `vit_from_timm`; returns the component and the zero tensors it leaves behind."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    name, pool, proj = cfg["timm_model_name"], cfg["timm_pool"], cfg["timm_proj"]
    if proj in ("linear", "mlp") or pool in ("abs_attn", "rot_attn"):
        raise UnsupportedArchitectureError(f"{folder / CONFIG}: vision_cfg timm_proj={proj!r} timm_pool={pool!r} adds "
                                           "an open_clip head that no transformers vision model holds")
    try:
        # as open_clip's TimmModel builds it when there is no extra head: timm_proj 'none' (SigLIP) has no
        # projection, otherwise the trunk's own classifier is the projection
        with torch.device("meta"):
            trunk = timm.create_model(name, num_classes=0 if proj == "none" else model_cfg["embed_dim"],
                                      global_pool=pool)
    except (RuntimeError, ValueError, TypeError) as e:
        raise UnsupportedArchitectureError(f"{folder / CONFIG}: timm cannot build {name!r} ({e})") from e
    if not isinstance(trunk, VisionTransformer):
        raise UnsupportedArchitectureError(f"{folder / CONFIG}: timm model {name!r} is a {type(trunk).__name__}, "
                                           "not a ViT")
    if tuple(trunk.patch_embed.img_size) != (cfg["image_size"],) * 2:
        raise UnsupportedArchitectureError(f"{folder / CONFIG}: vision_cfg image_size {cfg['image_size']} differs from "
                                           f"{name}'s {tuple(trunk.patch_embed.img_size)}")
    _check_shapes(weights, {f"trunk.{k}": tuple(v.shape) for k, v in trunk.state_dict().items()}, visual)
    try:
        component, left = vit_from_timm(trunk, {k.removeprefix("trunk."): t for k, t in visual.items()}, pre)
    except UnsupportedArchitectureError as e:
        raise UnsupportedArchitectureError(f"{folder / CONFIG}: timm model {name!r}: {e}") from e
    # a CLIP-style head becomes visual_projection.weight only when its bias is zero; that bias stays behind
    if set(left) - ({"head.bias"} if PROJECTION in component.extra else set()):
        raise UnsupportedArchitectureError(f"{weights}: tensor visual.trunk.{sorted(left)[-1]} (a classifier head) has "
                                           f"no place in {component.arch}")
    return component, {f"visual.trunk.{k}": t for k, t in left.items()}


# ---- helpers ------------------------------------------------------------------------------------------------------

def _check_shapes(weights: Path, expected: dict[str, tuple], visual: dict[str, LazyTensor]) -> None:
    """The `visual.*` tensors are exactly those the config implies, with its shapes (names without `visual.`)."""
    check_tensors({f"visual.{k}": s for k, s in expected.items()}, {f"visual.{k}": t for k, t in visual.items()},
                  str(weights), expected_from=f"the vision tower {CONFIG} configures")


def _prefix(name: str) -> str:
    """Group names for `Checkpoint.outside_reasons`: `text.transformer.x` -> `text.`, `logit_scale` -> `logit_scale`."""
    head, dot, _ = name.partition(".")
    return head + dot
