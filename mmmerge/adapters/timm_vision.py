"""timm VisionTransformer hub folders <-> CLIPVisionModel / SiglipVisionModel / Dinov2(WithRegisters)Model / ViTModel.

A timm hub folder is what `timm.models.save_for_hf` writes: `config.json` (`architecture`, `num_classes`,
`pretrained_cfg`, `model_args`) and `model.safetensors` or `pytorch_model.bin`. The model is built on the
meta device the way `timm.create_model("local-dir:PATH")` builds it, and its family is read off the built
modules rather than the architecture name, so any depth, width, head count or image size maps.

The key mapping is one table of rules, each relating some timm tensors to some transformers tensors by an
invertible operation, so `vit_from_timm` and `vit_to_timm` read the same table in both directions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoint import Checkpoint, Component, LazyTensor, chunk, combine, concat
from ..errors import MMMergeError, UnreadableFileError, UnsupportedArchitectureError
from ..io import read_folder, read_json
from ..io.check import check_tensors
from ..io.folder import write_model_folder
from ..io.writer import ONE_FILE
from .preprocess import from_timm_data_config

FORMAT = "timm"
_BUILT = "the timm model config.json builds"
DESCRIPTION = "timm hub folder (config.json with 'architecture' + model.safetensors)"

# A rule: (timm names, transformers names, kind). In the tables below `*` stands for `weight` and `bias`
# and `+` joins the names of a rule with several tensors on one side. Kinds: `copy`; `drop1`/`drop2`
# drop timm's leading singleton dims; `split` cuts timm's fused qkv into q, k, v; `fuse` stacks SigLIP's
# pooling q with kv into one in_proj; `fold` gives the class token the zero position transformers expects
# where timm (no_embed_class) gives it none.
Rule = tuple[tuple[str, ...], tuple[str, ...], str]


def _qkv(pattern: str, parts=("q", "k", "v")) -> str:
    return "+".join(pattern.format(x) for x in parts)


_HF_ATTN = [("attn.qkv.*", _qkv("attention.attention.{}.*", ("query", "key", "value")), "split"),
            ("attn.proj.*", "attention.output.dense.*")]  # ViT and DINOv2 (file layout)
_CLIP_BLOCK = [("norm1.*", "layer_norm1.*"), ("attn.qkv.*", _qkv("self_attn.{}_proj.*"), "split"),
               ("attn.proj.*", "self_attn.out_proj.*"), ("norm2.*", "layer_norm2.*"),
               ("mlp.fc1.*", "mlp.fc1.*"), ("mlp.fc2.*", "mlp.fc2.*")]
_VIT_BLOCK = [("norm1.*", "layernorm_before.*"), *_HF_ATTN, ("norm2.*", "layernorm_after.*"),
              ("mlp.fc1.*", "intermediate.dense.*"), ("mlp.fc2.*", "output.dense.*")]
_DINO_BLOCK = [("norm1.*", "norm1.*"), *_HF_ATTN, ("ls1.gamma", "layer_scale1.lambda1"), ("norm2.*", "norm2.*"),
               ("mlp.fc1.*", "mlp.fc1.*"), ("mlp.fc2.*", "mlp.fc2.*"), ("ls2.gamma", "layer_scale2.lambda1")]
_DINO_STEM = [("patch_embed.proj.*", "embeddings.patch_embeddings.projection.*"), ("norm.*", "layernorm.*")]

# transformers architecture -> (its layer prefix, block rules, rules outside the blocks). transformers names
# are the file layout (what `save_pretrained` writes and hub checkpoints hold), as in `hf_export`.
_LAYOUTS = {
    "CLIPVisionModel": ("encoder.layers.{}.", _CLIP_BLOCK, [
        ("cls_token", "embeddings.class_embedding", "drop2"),
        ("pos_embed", "embeddings.position_embedding.weight", "drop1"),
        ("patch_embed.proj.weight", "embeddings.patch_embedding.weight"),
        ("norm_pre.*", "pre_layrnorm.*"), ("norm.*", "post_layernorm.*")]),
    "SiglipVisionModel": ("encoder.layers.{}.", _CLIP_BLOCK, [
        ("patch_embed.proj.*", "embeddings.patch_embedding.*"),
        ("pos_embed", "embeddings.position_embedding.weight", "drop1"), ("norm.*", "post_layernorm.*")]),
    "Dinov2Model": ("encoder.layer.{}.", _DINO_BLOCK, [
        ("cls_token", "embeddings.cls_token"), ("pos_embed", "embeddings.position_embeddings"), *_DINO_STEM]),
    "Dinov2WithRegistersModel": ("encoder.layer.{}.", _DINO_BLOCK, [
        ("cls_token+pos_embed", "embeddings.cls_token+embeddings.position_embeddings", "fold"),
        ("reg_token", "embeddings.register_tokens"), *_DINO_STEM]),
    "ViTModel": ("encoder.layer.{}.", _VIT_BLOCK, [
        ("cls_token", "embeddings.cls_token"), ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj.*", "embeddings.patch_embeddings.projection.*"), ("norm.*", "layernorm.*")]),
}
_SIGLIP_HEAD = [("attn_pool.latent", "head.probe"),
                ("attn_pool.q.*+attn_pool.kv.*", "head.attention.in_proj_*", "fuse"),
                ("attn_pool.proj.*", "head.attention.out_proj.*"), ("attn_pool.norm.*", "head.layernorm.*"),
                ("attn_pool.mlp.fc1.*", "head.mlp.fc1.*"), ("attn_pool.mlp.fc2.*", "head.mlp.fc2.*")]
_PROJECTION = [("head.weight", "visual_projection.weight")]
_MODEL_TYPES = {"CLIPVisionModel": "clip_vision_model", "SiglipVisionModel": "siglip_vision_model",
                "Dinov2Model": "dinov2", "Dinov2WithRegistersModel": "dinov2_with_registers", "ViTModel": "vit"}
_ACTS = {"GELU": "gelu", "GELUTanh": "gelu_pytorch_tanh", "QuickGELU": "quick_gelu"}


def _expand(entries, timm_prefix: str = "", hf_prefix: str = "") -> list[Rule]:
    rules = []
    for timm_names, hf_names, *kind in entries:
        for suffix in ("weight", "bias") if "*" in timm_names else ("",):
            def names(joined, prefix):
                return tuple(prefix + n.replace("*", suffix) for n in joined.split("+"))
            rules.append((names(timm_names, timm_prefix), names(hf_names, hf_prefix), kind[0] if kind else "copy"))
    return rules


def _rules(arch: str, depth: int, head: bool, projection: bool) -> list[Rule]:
    layer, block, stem = _LAYOUTS[arch]
    rules = _expand(stem)
    for i in range(depth):
        rules += _expand(block, f"blocks.{i}.", layer.format(i))
    return rules + _expand(_SIGLIP_HEAD if head else []) + _expand(_PROJECTION if projection else [])


def _reshape(t: LazyTensor, shape) -> LazyTensor:
    return t.derive(lambda x: x.reshape(shape), shape)


def _fold_cls(cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """timm (no_embed_class) has no class-token position: fold one into the token, unless it is zero."""
    first = pos[:, :1]
    return cls + first if first.any() else cls


def _to_hf(kind: str, parts: list[LazyTensor]) -> list[LazyTensor]:
    if kind in ("drop1", "drop2"):
        return [_reshape(parts[0], parts[0].shape[int(kind[-1]):])]
    if kind == "split":
        return chunk(parts[0], 3)
    if kind == "fuse":
        return [concat(parts)]
    if kind == "fold":
        cls, pos = parts
        shape = (1, pos.shape[1] + 1, pos.shape[2])
        return [cls, pos.derive(lambda p: torch.cat([p.new_zeros(1, 1, p.shape[2]), p], dim=1), shape)]
    return parts


def _to_timm(kind: str, parts: list[LazyTensor]) -> list[LazyTensor]:
    if kind in ("drop1", "drop2"):
        return [_reshape(parts[0], (1,) * int(kind[-1]) + parts[0].shape)]
    if kind == "split":
        return [concat(parts)]
    if kind == "fuse":
        q, k, v = chunk(parts[0], 3)
        return [q, concat([k, v])]
    if kind == "fold":
        cls, pos = parts
        shape = (1, pos.shape[1] - 1, pos.shape[2])
        return [combine([cls, pos], _fold_cls, cls.shape), pos.derive(lambda p: p[:, 1:].clone(), shape)]
    return parts


def _placeholders(arch: str, dim: int, dtype: torch.dtype) -> dict[str, LazyTensor]:
    """Tensors `arch` holds that a timm model has no counterpart for.

    DINOv2's mask token is used only for masked-image training, so zeros change no output. `ViTModel`
    always builds a pooler (dense + tanh) that timm lacks and that its config cannot switch off; an
    identity dense with `pooler_act="linear"` makes `pooler_output` equal timm's pre-logits (the normed
    class token), where leaving it out would make transformers initialise it at random.
    """
    def const(shape, make):
        return LazyTensor(shape, dtype, lambda: make().to(dtype))
    if arch.startswith("Dinov2"):
        return {"embeddings.mask_token": const((1, dim), lambda: torch.zeros(1, dim))}
    if arch == "ViTModel":
        return {"pooler.dense.weight": const((dim, dim), lambda: torch.eye(dim)),
                "pooler.dense.bias": const((dim,), lambda: torch.zeros(dim))}
    return {}


def _act_name(act: nn.Module) -> str | None:
    name = type(act).__name__
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        name = "GELUTanh"
    return _ACTS.get(name)


def _inspect(model: nn.Module) -> tuple[str, dict]:
    """The transformers architecture and config that compute what `model` computes, or the reason none does."""
    from timm.layers import Attention, AttentionPoolLatent, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise UnsupportedArchitectureError(f"a {type(model).__name__} is no timm VisionTransformer; it has no mapping")
    pe, blocks = model.patch_embed, list(model.blocks)
    if type(pe) is not PatchEmbed or not blocks or any(
            type(b) is not Block or type(b.attn) is not Attention or type(b.mlp) is not Mlp for b in blocks):
        raise UnsupportedArchitectureError("a patch embedding or blocks other than timm's PatchEmbed and pre-norm Block"
                                           " with plain Attention and Mlp have no transformers equivalent")
    cls, reg = model.cls_token is not None, model.num_reg_tokens
    pre, ls = not isinstance(model.norm_pre, nn.Identity), not isinstance(blocks[0].ls1, nn.Identity)
    if cls and pre and not ls and not reg:
        arch = "CLIPVisionModel"
    elif not cls and not pre and not ls and not reg:
        arch = "SiglipVisionModel"
    elif cls and not pre and ls:
        arch = "Dinov2WithRegistersModel" if reg else "Dinov2Model"
    elif cls and not pre and not ls and not reg:
        arch = "ViTModel"
    else:
        raise UnsupportedArchitectureError(
            f"class token={cls}, register tokens={reg}, pre-norm={pre}, layer scale={ls} matches no transformers model")

    dim, heads, hidden = model.embed_dim, blocks[0].attn.num_heads, blocks[0].mlp.fc1.out_features
    act = _act_name(blocks[0].mlp.act)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    pool = model.attn_pool
    problems = {
        "a dynamic or non-square image size": model.dynamic_img_size or pe.dynamic_img_pad or not pe.strict_img_size
            or pe.img_size[0] != pe.img_size[1],
        "a patch embedding with a norm, or non-square patches": not isinstance(pe.norm, nn.Identity) or not pe.flatten
            or pe.patch_size[0] != pe.patch_size[1],
        "no learned position embedding": model.pos_embed is None,
        "blocks of unequal widths, or attention narrower or wider than the embedding": any(
            (b.attn.attn_dim, b.attn.num_heads, b.mlp.fc1.out_features, _act_name(b.mlp.act))
            != (dim, heads, hidden, act) for b in blocks),
        f"activation {type(blocks[0].mlp.act).__name__}": act is None,
        "normalization other than LayerNorm with one eps": len({m.eps for m in norms}) != 1,
        "no final norm, or a norm after pooling (fc_norm)": isinstance(model.norm, nn.Identity)
            or not isinstance(model.fc_norm, nn.Identity),
        f"global pool '{model.global_pool}'": model.global_pool not in (("token", "") if cls else ("map", "")),
        "position embeddings that skip the class token (no_embed_class) without register tokens, or register "
        "tokens with position embeddings": cls and model.no_embed_class != bool(reg),
        "an attention pool other than SigLIP's": pool is not None and (
            type(pool) is not AttentionPoolLatent or pool.latent_len != 1 or pool.pos_embed is not None
            or pool.pool != "token" or pool.mlp is None or not isinstance(pool.q, nn.Linear)
            or (pool.num_heads, pool.mlp.fc1.out_features, _act_name(pool.mlp.act)) != (heads, hidden, act)),
        f"an MLP width ({hidden}) that is no whole multiple of the width ({dim}), as Dinov2Config's integer "
        "mlp_ratio needs": arch.startswith("Dinov2") and hidden % dim != 0,
    }
    for feature, present in problems.items():
        if present:
            raise UnsupportedArchitectureError(f"{feature} has no transformers equivalent")

    config = {"model_type": _MODEL_TYPES[arch], "hidden_size": dim, "num_hidden_layers": len(blocks),
              "num_attention_heads": heads, "num_channels": pe.proj.in_channels, "image_size": pe.img_size[0],
              "patch_size": pe.patch_size[0], "hidden_act": act, "layer_norm_eps": norms[0].eps}
    if arch.startswith("Dinov2"):
        config["mlp_ratio"] = hidden // dim
    else:
        config["intermediate_size"] = hidden
    if arch == "SiglipVisionModel":
        config["vision_use_head"] = pool is not None
    if arch == "Dinov2WithRegistersModel":
        config["num_register_tokens"] = reg
    if arch == "ViTModel":
        config["pooler_act"] = "linear"
    return arch, config


def vit_from_timm(model: nn.Module, tensors: dict[str, LazyTensor],
                  preprocess: dict | None) -> tuple[Component, dict[str, LazyTensor]]:
    """The canonical vision component of a timm VisionTransformer, and the tensors no component holds.

    `model` (on the meta device) is only introspected; `tensors` is its state dict with timm names. A
    CLIP-style head with a zero bias is the CLIP projection: its weight travels as the extra tensor
    `visual_projection.weight` (the bias stays behind); any other head is a classifier and stays behind.
    That bias is the only tensor read.
    """
    arch, config = _inspect(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # tensors the model does not hold are returned to the caller, who keeps them aside
    check_tensors(expected, tensors, "timm state dict", allow_unexpected=True, expected_from=_BUILT)
    projection = (arch == "CLIPVisionModel" and isinstance(model.head, nn.Linear)
                  and not tensors["head.bias"].load().any())
    if projection:
        config["projection_dim"] = model.head.out_features
    rules = _rules(arch, len(model.blocks), model.attn_pool is not None, projection)
    used = {n for timm_names, _, _ in rules for n in timm_names}
    lacking = [n for timm_names, _, _ in rules for n in timm_names if n not in expected]
    if lacking:
        raise UnsupportedArchitectureError(f"the model has no {lacking[0]}, which {arch} needs")
    unmapped = [n for n in expected if n not in used and not n.startswith("head.")]
    if unmapped:
        raise UnsupportedArchitectureError(f"parameter {unmapped[0]} has no place in {arch}")
    out: dict[str, LazyTensor] = {}
    for timm_names, hf_names, kind in rules:
        out.update(zip(hf_names, _to_hf(kind, [tensors[n] for n in timm_names])))
    placeholders = _placeholders(arch, model.embed_dim, tensors["pos_embed"].dtype)
    component = Component("vision", arch, config, {**out, **placeholders}, preprocess,
                          extra=("visual_projection.weight",) if projection else (), placeholders=tuple(placeholders))
    return component, {k: v for k, v in tensors.items() if k not in used}


def vit_to_timm(component: Component) -> dict[str, LazyTensor]:
    """The timm state dict of a vision component that `vit_from_timm` made (or one of the same layout).

    Placeholder tensors are dropped; any other tensor timm has no place for is an error, never dropped.
    """
    if component.arch not in _LAYOUTS:
        raise UnsupportedArchitectureError(f"{component.arch}: timm's VisionTransformer has no layout for it")
    t = component.tensors
    rules = _rules(component.arch, component.config["num_hidden_layers"], "head.probe" in t,
                   "visual_projection.weight" in t)
    hf_used = [n for _, hf_names, _ in rules for n in hf_names]
    missing = [n for n in hf_used if n not in t]
    if missing:
        raise MMMergeError(f"{component.arch}: tensor {missing[0]} is missing from the {component.name} component")
    unplaced = [n for n in t if n not in hf_used and n not in component.placeholders]
    if unplaced:
        raise UnsupportedArchitectureError(
            f"{component.arch}: tensor {unplaced[0]} has no place in a timm VisionTransformer")
    out: dict[str, LazyTensor] = {}
    for timm_names, hf_names, kind in rules:
        out.update(zip(timm_names, _to_timm(kind, [t[n] for n in hf_names])))
    return out


def _meta_model(folder: Path, shown: Path | None = None) -> nn.Module:
    """What `timm.create_model("local-dir:FOLDER")` builds (pretrained_cfg included), without memory."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(f"local-dir:{folder}", pretrained=False)
    except Exception as e:  # timm raises anything on bad model_args (TypeError, AssertionError, RuntimeError ...)
        text = str(e).strip().splitlines() or [type(e).__name__]
        raise UnreadableFileError(f"{shown or folder}/config.json: timm cannot build this model ({text[0]})") from e


def detect(path: Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "architecture" in read_json(config)
    except MMMergeError:
        return False


def read(path: Path) -> Checkpoint:
    import timm.data

    path = Path(path)
    config = read_json(path / "config.json")
    if not isinstance(config.get("architecture"), str) or not isinstance(config.get("model_args", {}), dict):
        raise UnreadableFileError(f"{path / 'config.json'}: 'architecture' must be a timm model name and"
                                  f" 'model_args' an object")
    model = _meta_model(path)
    tensors = read_folder(path)
    preprocess = from_timm_data_config(timm.data.resolve_data_config({}, model=model))
    try:
        component, outside = vit_from_timm(model, tensors, preprocess)
    except MMMergeError as e:
        raise type(e)(f"{path}: {e}") from e
    reasons = {name: "zero bias of the CLIP projection head (visual_projection.weight)"
               if component.extra and name == "head.bias" else
               "timm classifier head" if name.startswith("head.") else
               f"not a parameter of timm {config['architecture']}" for name in outside}
    return Checkpoint(path, FORMAT, {"vision": component}, outside_reasons=reasons, outside=outside, source_config=config)


def write_source(checkpoint: Checkpoint, out: Path, force: bool = False) -> None:
    """config.json as read and one model.safetensors (timm's local-dir loader reads no shard index)."""
    tensors = {**vit_to_timm(checkpoint.component("vision")), **checkpoint.outside}

    def check(folder: Path) -> None:  # the model timm builds from the config about to be written
        check_tensors(_meta_model(folder, shown=out).state_dict(), tensors, str(out), allow_unexpected=True,
                      expected_from=_BUILT, got_from="the tensors to write")

    write_model_folder(out, tensors, checkpoint.source_config, force=force, max_shard_bytes=ONE_FILE, check=check)
