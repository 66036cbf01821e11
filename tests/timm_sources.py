"""Tiny timm hub folders for the tests (saved with `save_for_hf`), the cases the adapter is tested on, and
timm's own forward with every hidden state."""

from __future__ import annotations

import timm
import torch
from timm.models import save_for_hf

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
DINO = dict(SMALL, img_size=28, patch_size=14)
# name: (timm architecture, model_args, num_classes, transformers class)
CASES = {
    "clip_gelu": ("vit_base_patch16_clip_224", SMALL, 16, "CLIPVisionModel"),  # head with zero bias: a projection
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", SMALL, 0, "CLIPVisionModel"),
    "siglip": ("vit_base_patch16_siglip_224", SMALL, 10, "SiglipVisionModel"),
    "dinov2": ("vit_small_patch14_dinov2", DINO, 0, "Dinov2Model"),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", DINO, 0, "Dinov2WithRegistersModel"),
    "vit": ("vit_base_patch16_224", SMALL, 10, "ViTModel"),
    "odd": ("vit_base_patch16_siglip_224", dict(img_size=48, patch_size=8, embed_dim=48, depth=3, num_heads=6,
                                                mlp_ratio=2.5, global_pool="", act_layer="gelu_tanh"), 0,
            "SiglipVisionModel"),
}


def make_timm(folder, arch, model_args, num_classes=0, safe=True, dtype=torch.float32):
    """A timm model with every parameter perturbed (norms, layer scales, tokens are not trivially 1 or 0)."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **model_args)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if arch.startswith("vit_base_patch16_clip") and num_classes:
            model.head.bias.zero_()  # what timm's OpenAI CLIP conversion writes for the projection
    save_for_hf(model.to(dtype), folder, model_config={"model_args": model_args}, safe_serialization=safe)
    return model.eval()


def timm_forward(model, x):
    """Embedding output (after norm_pre), each block's output, final features, pre-logits, logits."""
    states = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: states.append(out)) for m in [model.norm_pre, *model.blocks]]
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    for h in hooks:
        h.remove()
    return states, feats, pooled, logits
