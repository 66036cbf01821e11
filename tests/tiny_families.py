"""Tiny random models of every multimodal family, built from each family's own transformers config class.

The configs are examples/tiny_family_configs.py's (the smallest that build: two text layers, two vision layers,
hidden size 32 or 64), so the contract tests run over real architectures in a second each, offline; this module
adds the random models and what the tests feed their vision towers.
"""

from __future__ import annotations

import torch

from tiny_family_configs import CONFIGS, IMAGE_TOKEN, TEXT, tiny_config  # noqa: F401  (re-exported for tests)


def tiny_model(model_type: str, seed: int = 0):
    """A random model of the family's image-text-to-text class, every parameter perturbed."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_config(model_type))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def save_tiny(model_type: str, path, seed: int = 0):
    model = tiny_model(model_type, seed)
    model.save_pretrained(path)
    return model


def vision_inputs(model_type: str, seed: int = 0) -> dict:
    """Keyword arguments for the family's vision class forward: a 32x32 image (16x16 for Qwen-style towers,
    given as their flattened patches), in the form the family's own class takes."""
    g = torch.Generator().manual_seed(seed)
    if model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v"):
        patches = torch.randn(16, 3 * 2 * 4 * 4, generator=g)  # 4x4 patches of 4x4 pixels, 2 frames
        return {"hidden_states": patches, "grid_thw": torch.tensor([[1, 4, 4]])}
    if model_type == "mllama":
        return {"pixel_values": torch.randn(1, 1, 2, 3, 32, 32, generator=g),
                "aspect_ratio_ids": torch.tensor([[2]]), "aspect_ratio_mask": torch.ones(1, 1, 2, dtype=torch.long)}
    return {"pixel_values": torch.randn(1, 3, 32, 32, generator=g)}


def vision_module(model, model_type: str):
    """The full model's own vision tower (with the projector where the family's vision class holds it)."""
    inner = model.model
    for name in ("visual", "vision_tower", "vision_model"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise AttributeError(model_type)
