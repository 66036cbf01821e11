"""Image preprocessing in one neutral form, and its transformers image-processor config.

The neutral form, kept in `Component.preprocess`:
  {"image_size": [H, W],            # what the encoder sees (the crop)
   "resize_mode": "shortest" | "squash",
   "resize": int,                   # shortest edge before the center crop ("shortest" only)
   "mean": [r, g, b], "std": [r, g, b],
   "interpolation": "bicubic" | "bilinear" | "nearest"}
"shortest" resizes the shortest edge to `resize` and center-crops `image_size` (CLIP, timm);
"squash" resizes straight to `image_size` (SigLIP).
"""

from __future__ import annotations

import math

PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}
RESAMPLE_NAMES = {v: k for k, v in PIL_RESAMPLE.items()}


def make_preprocess(image_size, mean, std, interpolation="bicubic", resize_mode="shortest", resize=None) -> dict:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return {
        "image_size": [int(h), int(w)],
        "resize_mode": resize_mode,
        "resize": int(resize if resize is not None else min(h, w)) if resize_mode == "shortest" else None,
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "interpolation": interpolation,
    }


def from_timm_data_config(cfg: dict) -> dict:
    """From `timm.data.resolve_data_config`: crop_pct < 1 means resize to floor(size / crop_pct) first."""
    _, h, w = cfg["input_size"]
    mode = cfg.get("crop_mode", "center")
    crop_pct = cfg.get("crop_pct", 1.0)
    if mode == "squash":
        return make_preprocess((h, w), cfg["mean"], cfg["std"], cfg.get("interpolation", "bicubic"), "squash")
    resize = math.floor(min(h, w) / crop_pct)
    return make_preprocess((h, w), cfg["mean"], cfg["std"], cfg.get("interpolation", "bicubic"), "shortest", resize)


def image_processor_config(pre: dict) -> dict:
    """A `preprocessor_config.json` dict for CLIPImageProcessor-like (`shortest`) or squash processors."""
    h, w = pre["image_size"]
    cfg = {
        "image_processor_type": processor_type_for(pre),
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": PIL_RESAMPLE[pre["interpolation"]],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": pre["mean"],
        "image_std": pre["std"],
    }
    if pre["resize_mode"] == "squash":
        cfg.update(size={"height": h, "width": w})
    else:
        cfg.update(size={"shortest_edge": pre["resize"]}, do_center_crop=True, crop_size={"height": h, "width": w})
    return cfg


def processor_type_for(pre: dict) -> str:
    """The transformers image processor class that reproduces `pre`."""
    return "SiglipImageProcessor" if pre["resize_mode"] == "squash" else "CLIPImageProcessor"
