"""Tiny open_clip hub folders for the tests: two tiny timm trunks registered under their own names, the cases
the adapter is tested on, a folder writer and open_clip's own hidden states."""

import json
from functools import partial

import open_clip
import torch
from safetensors.torch import load_file, save_file
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import VisionTransformer

from mmmerge.adapters import open_clip_vision
from tiny import randomize

TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 4, "layers": 1}
VISION = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 8}


@register_model
def mmmerge_test_siglip(pretrained=False, **kwargs):
    """A tiny `vit_base_patch16_siglip_224`: same construction, small sizes (open_clip passes no size kwargs)."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, class_token=False, global_pool="map",
                act_layer="gelu_tanh")
    return build_model_with_cfg(VisionTransformer, "mmmerge_test_siglip", pretrained, **{**args, **kwargs})


@register_model
def mmmerge_test_clip(pretrained=False, **kwargs):
    """A tiny `vit_large_patch14_clip_quickgelu_224`: with timm_proj null (as MobileCLIP2-L-14) its head projects."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, pre_norm=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-5), act_layer="quick_gelu")
    return build_model_with_cfg(VisionTransformer, "mmmerge_test_clip", pretrained, **{**args, **kwargs})


CASES = {
    "gelu": dict(vision_cfg=VISION),
    "quickgelu": dict(vision_cfg=VISION, quick_gelu=True),
    # odd sizes, options that keep the math (eps, LN after pooling the class token, fixed sin-cos positions)
    "odd": dict(vision_cfg={"image_size": 48, "patch_size": 8, "width": 48, "layers": 3, "head_width": 8,
                            "mlp_ratio": 2.5, "norm_kwargs": {"eps": 1e-6}, "final_ln_after_pool": True,
                            "pos_embed_type": "sin_cos_2d"},
                preprocess_cfg={"mean": [0.1, 0.2, 0.3], "std": [0.7, 0.8, 0.9], "interpolation": "bilinear"}),
    "bin": dict(vision_cfg=VISION, weights="open_clip_pytorch_model.bin"),
    "fp16": dict(vision_cfg=VISION, dtype=torch.float16),
    "siglip": dict(vision_cfg={"image_size": 32, "timm_model_name": "mmmerge_test_siglip", "timm_pool": "map",
                               "timm_proj": "none"},
                   text_cfg={**TEXT, "no_causal_mask": True, "proj_bias": True, "pool_type": "last"},
                   extra={"custom_text": True, "init_logit_bias": -10},
                   preprocess_cfg={"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"}),
    "timm_clip": dict(vision_cfg={"image_size": 32, "timm_model_name": "mmmerge_test_clip", "timm_pool": "token",
                                  "timm_proj": None}, zero=("visual.trunk.head.bias",)),
}


def make_folder(path, vision_cfg, quick_gelu=False, text_cfg=TEXT, extra=None, preprocess_cfg=None,
                weights="open_clip_model.safetensors", dtype=torch.float32, zero=(), seed=0):
    """A random open_clip model saved as a hub folder."""
    path.mkdir(parents=True)
    config = {"model_cfg": {"embed_dim": 16, "quick_gelu": quick_gelu, "vision_cfg": vision_cfg, "text_cfg": text_cfg,
                            **(extra or {})}}
    if preprocess_cfg:
        config["preprocess_cfg"] = preprocess_cfg
    (path / "open_clip_config.json").write_text(json.dumps(config))
    (path / "tokenizer_config.json").write_text("{}")
    model = randomize(open_clip.create_model(f"local-dir:{path}"), seed)
    for name in zero:
        model.get_parameter(name).data.zero_()
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    if weights.endswith(".safetensors"):
        save_file(state, path / weights)
    else:
        torch.save(state, path / weights)


def source_tensors(folder):
    name = open_clip_vision.weights_file(folder)
    return load_file(name) if name.suffix == ".safetensors" else torch.load(name, weights_only=True)


def open_clip_states(model, pixels):
    """Embedding output and every block output of open_clip's visual tower, batch first, and the image embedding."""
    visual = model.visual
    if hasattr(visual, "trunk"):  # SigLIP has no pre-norm: the Identity's output is the patch + position sum
        first, blocks, batch_first = visual.trunk.norm_pre, visual.trunk.blocks, True
    else:
        first, blocks, batch_first = visual.ln_pre, visual.transformer.resblocks, visual.transformer.batch_first
    states = []
    hooks = [m.register_forward_hook(lambda m, i, o: states.append(o)) for m in [first, *blocks]]
    with torch.no_grad():
        embedding = model.encode_image(pixels)
    for h in hooks:
        h.remove()
    return [s if batch_first else s.transpose(0, 1) for s in states], embedding
