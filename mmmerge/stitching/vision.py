"""The vision side of a LLaVA: which hidden states and tokens the projector sees, how images are preprocessed, and
how many image tokens that makes."""

from __future__ import annotations

from pathlib import Path

from ..adapters.open_clip_vision import OPENAI_MEAN, OPENAI_STD
from ..checkpoint import Component
from ..errors import RecipeError, ShapeMismatchError, UnsupportedArchitectureError

DEFAULT_FEATURE_LAYER = -2  # LLaVA-1.5
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# vision towers a LLaVA holds -> class tokens before the patch tokens (DINOv2 with registers adds its registers)
CLASS_TOKENS = {"SiglipVisionModel": 0, "Idefics3VisionTransformer": 0, "SmolVLMVisionTransformer": 0,
                "CLIPVisionModel": 1, "Dinov2Model": 1, "ViTModel": 1, "Dinov2WithRegistersModel": 1,
                "InternVLVisionModel": 1}


def feature_selection(vision: Component, projector_strategy: str | None = None) -> tuple[str, int]:
    """(vision_feature_select_strategy, num_additional_image_tokens) for the encoder's tokens.

    A class token is dropped ("default") unless the projector was made for "full"; SigLIP has none.
    """
    arch = vision.arch
    if arch not in CLASS_TOKENS:
        raise UnsupportedArchitectureError(f"a {arch} vision tower has no LLaVA feature selection mmmerge knows")
    if CLASS_TOKENS[arch] == 0:
        return "full", 0
    extra = 1 + int(vision.config.get("num_register_tokens", 0) if arch == "Dinov2WithRegistersModel" else 0)
    return ("full" if projector_strategy == "full" else "default"), extra


def vision_preprocess(path: Path, vision: Component) -> tuple[dict, str | None]:
    """The encoder's own preprocessing; a LLaVA's processor; a documented default when the source has none."""
    from ..adapters.hf_vision import read_preprocess
    from ..adapters.preprocess import make_preprocess

    if vision.preprocess:
        return vision.preprocess, None
    found = read_preprocess(path) if Path(path).is_dir() else None
    if found:
        return found, None
    size = vision.config.get("image_size", 224)
    size = tuple(size) if isinstance(size, list) else size
    if vision.arch == "SiglipVisionModel":
        pre = make_preprocess(size, (0.5,) * 3, (0.5,) * 3, "bicubic", "squash")
    elif vision.arch == "CLIPVisionModel":
        pre = make_preprocess(size, OPENAI_MEAN, OPENAI_STD, "bicubic", "shortest")
    else:
        pre = make_preprocess(size, IMAGENET_MEAN, IMAGENET_STD, "bicubic", "shortest")
    return pre, f"{path} has no preprocessing config; used the {vision.arch} default (mean {pre['mean']})"


def layers(layer: int | list[int]) -> list[int]:
    """The feature layer(s) as a list."""
    return [layer] if isinstance(layer, int) else list(layer)


def check_feature_layer(layer: int | list[int], vision: Component) -> None:
    n = vision.config["num_hidden_layers"] + 1  # hidden states: embeddings + every block
    for i in layers(layer):
        if not -n <= i < n:
            raise RecipeError(f"vision feature layer {i} is out of range: the {vision.arch} has {n} hidden states "
                              f"({-n}..{n - 1})")


def patch_size(vision: Component) -> int:
    p = vision.config["patch_size"]
    return p if isinstance(p, int) else p[0]


def image_seq_length(pre: dict, vision: Component, strategy: str, additional: int) -> int:
    """Image tokens per image: one per patch, plus the class (and register) tokens the selection keeps."""
    h, w = pre["image_size"]
    p = patch_size(vision)
    size = vision.config.get("image_size")
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    # only DINOv2 interpolates its position table; the other towers take the size they were made for
    if vision.arch not in ("Dinov2Model", "Dinov2WithRegistersModel") and (h, w) != size:
        raise ShapeMismatchError(f"the image processor gives {h}x{w} images, the {vision.arch} takes {size[0]}x{size[1]}")
    return (h // p) * (w // p) + additional - (1 if strategy == "default" else 0)
