"""A tiny random model of ANY image-text-to-text type transformers lists, built from the type's own config class.

    model = tiny_any("idefics2")            # a random Idefics2ForConditionalGeneration, a few hundred KB
    model.save_pretrained(folder)

No per-family code: the default config (with a vision sub-config it leaves out filled with that sub-config's own
defaults) is shrunk key by key (widths, layer counts, heads, experts, vocabulary;
lists of layer indices cut to the layers left), recursively through its sub-configs. The only family knowledge
is the small OVERRIDES table, each entry with its reason. So that a tiny model with a processor
(examples/tiny_any_processor.py) can generate: token ids the shrunk vocabulary no longer holds move inside it, and
placeholder ids the default config leaves None get free ids; multimodal rope sections (the config's, or the model's
code default) are split over the shrunk head; a cut list of layer kinds keeps a plain attention layer; an image
size whose patch grid the model's merge factor cannot divide is rounded up.
"""

from __future__ import annotations

import torch
import transformers as T
from transformers.models.auto import modeling_auto

WIDTH, FFN, LAYERS, HEADS, KV_HEADS, EXPERTS, VOCAB = 32, 64, 2, 4, 2, 4, 320
SHRINK = {
    **dict.fromkeys(("hidden_size", "embed_dim", "d_model", "n_embd", "out_hidden_size", "projection_dim",
                     "text_hidden_size", "vision_hidden_size", "hidden_dim", "width", "codebook_dim",
                     "hidden_size_per_layer_input", "mm_embed_dim"), WIDTH),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "mlp_dim", "moe_intermediate_size", "encoder_ffn_dim",
                     "decoder_ffn_dim", "shared_expert_intermediate_size", "n_inner"), FFN),
    **dict.fromkeys(("num_hidden_layers", "num_layers", "depth", "n_layer", "n_layers", "encoder_layers",
                     "decoder_layers", "num_global_layers"), LAYERS),
    **dict.fromkeys(("num_attention_heads", "num_heads", "n_head", "encoder_attention_heads",
                     "decoder_attention_heads", "attention_heads"), HEADS),
    **dict.fromkeys(("num_key_value_heads",), KV_HEADS),
    **dict.fromkeys(("num_experts", "n_routed_experts", "num_local_experts"), EXPERTS),
    **dict.fromkeys(("num_experts_per_tok", "moe_k"), 2),
    **dict.fromkeys(("vocab_size", "vocab_size_per_layer_input", "unpadded_vocab_size"), VOCAB),
    "head_dim": WIDTH // HEADS,
}

LAYER_KEYS = ("num_hidden_layers", "depth", "num_layers", "n_layer", "n_layers")
# Integer factors by which a model merges its vision tower's patch grid (pixel shuffle, spatial merge), in its config
# or its vision config.
MERGE_FACTORS = ("scale_factor", "spatial_merge_size", "downsample_factor")


def _shrink(value, key: str = ""):
    """`value` with every size SHRINK names cut down; in a config dict, the lists that hold one entry per layer cut
    to the layers left, lists of layer indices kept to the layers left, token ids kept inside the vocabulary, and
    multimodal rope sections split over the new head size."""
    if isinstance(value, list):
        return [_shrink(v, key) for v in value]
    if not isinstance(value, dict):
        small = SHRINK.get(key)
        return small if small is not None and type(value) is int and value > small else value
    layers = next((value[k] for k in LAYER_KEYS if type(value.get(k)) is int), None)
    out = {k: _shrink(v, k) for k, v in value.items()}
    if out.get("num_key_value_heads") and value.get("num_key_value_heads") == value.get("num_attention_heads"):
        out["num_key_value_heads"] = out.get("num_attention_heads")
    left = next((out[k] for k in LAYER_KEYS if type(out.get(k)) is int), None)
    if layers and left:
        for k, v in out.items():
            if isinstance(v, list) and len(v) == layers and layers > left:
                out[k] = _cut_per_layer(v, left)
            elif isinstance(v, list) and ("layer" in k or "index" in k) and v and all(type(i) is int for i in v):
                out[k] = [i for i in v if -left <= i < left] or [left - 1]  # layer indices
            elif isinstance(v, dict) and ("layer" in k) and all(str(i).isdigit() for i in v):
                out[k] = {i: c for i, c in v.items() if int(i) < left}
    vocab = out.get("vocab_size")
    if type(vocab) is int:
        ids = [k for k, v in out.items() if k.endswith(("_token_id", "_token_index", "padding_idx"))
               and type(v) is int and v >= vocab]
        for n, k in enumerate(ids):
            out[k] = vocab - 1 - n
    head = _head_size(out)
    for k in ("rope_parameters", "rope_scaling"):
        rope = out.get(k)
        if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list) and head:
            out[k] = {**rope, "mrope_section": _sections(_rotary_size(head, rope), len(rope["mrope_section"]))}
    return out


def _head_size(config: dict) -> int:
    return config.get("head_dim") or (config.get("hidden_size", 0) // max(config.get("num_attention_heads") or 1, 1))


def _rotary_size(head: int, rope: dict) -> int:
    """The part of the head the rope rotates."""
    return int(head * rope.get("partial_rotary_factor", 1.0))


def _sections(rotary: int, n: int) -> list[int]:
    """`n` multimodal rope sections that together cover its rotary frequencies (half the rotated size), as even as
    can be."""
    half = rotary // 2
    return [half // n + (1 if i < half % n else 0) for i in range(n)]


def _image_code_vocabulary(token, codes: int, first: int = 4, **more: int) -> dict:
    """A config's vocabulary_map (token string -> id) as a VQ model's checkpoint holds it: `token(code)` for each of
    the image tokenizer's `codes` at ids from `first`, `<image>` (and the tokens `more` names) at the top of the
    shrunk vocabulary."""
    return {**{token(code): first + code for code in range(codes)}, "<image>": VOCAB - 1, **more}


# Family knowledge, as data: model_type -> (config keys to set after shrinking, why). A dict set on a sub-config is
# merged into it key by key. Each sets, at the shrunk sizes, what the type's checkpoints hold in config.json and its
# default config leaves None or unusable, or fields that must agree with others and that no SHRINK key names (the hub
# repository named is the one transformers' docstrings and tests cite).
OVERRIDES: dict[str, tuple[dict, str]] = {
    "apertus1p5": ({"image_token_offset": 128, "audio_token_offset": 256,
                    "vision_config": {"codebook_size": 128, "base_channels": WIDTH, "latent_channels": WIDTH,
                                      "channel_multiplier": [1] * 5, "num_res_blocks": 1},
                    "audio_config": {"codebook_size": 32, "num_filters": 2}},
                   "swiss-ai/Apertus-v1.5-8B's vocabulary holds the text tokens, then one token per image code, then "
                   "one per audio code; here the shrunk vocabulary (320) is laid out the same way, with small "
                   "codebooks (and image and audio tokenizers whose channels no shrunk key names, made narrow)"),
    "aria": ({"vision_config": {"image_size": 980, "patch_size": 140}, "projector_patch_to_query_dict": {49: 256}},
             "rhymes-ai/Aria's projector pools a 980-pixel image's patches (4900 of 14 pixels) into 256 queries, by a "
             "table of patch counts its processor's 980-pixel images must be in; here 49 patches of 140 pixels"),
    "chameleon": ({"vocabulary_map": _image_code_vocabulary(
                       lambda code: "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z", 64),
                   "vq_config": {"num_embeddings": 64, "latent_channels": WIDTH, "base_channels": WIDTH,
                                 "channel_multiplier": [1] * 5, "num_res_blocks": 1}},
                  "facebook/chameleon-7b's config maps its tokenizer's image tokens (IMGIMG<code in letters>Z, one "
                  "per code of its 8192-code VQ-GAN, ids 4-8195) and <image> (8711) in vocabulary_map, which the "
                  "default leaves None; here 64 codes and a narrow VQ-GAN (channels no shrunk key names)"),
    "cohere_compass": ({"text_config": {"rope_parameters": {"full_attention": {
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": _sections(WIDTH // HEADS, 3)}}}},
        "CohereLabs/North-Micro-Vision-Instruct gives rope parameters per layer type, which the rotary embedding "
        "reads by the layers' type; the default gives none"),
    "deepseek_ocr2": ({"text_config": {"mlp_layer_types": ["dense"] + ["sparse"] * (LAYERS - 1),
                                       "num_experts_per_tok": 2},
                       "vision_config": {"sam_config": {"output_channels": WIDTH // 2,
                                                        "downsample_channels": [WIDTH // 2, WIDTH]}}},
                      "deepseek-community/DeepSeek-OCR-2's decoder has a dense first layer and mixture-of-experts "
                      "layers after it, and routes each token to a few experts; the default names neither (its SAM "
                      "neck's channels, which no shrunk key names, are cut as transformers' own test cuts them)"),
    "dots3_note": ({"text_config": {"q_lora_rank": WIDTH, "kv_lora_rank": WIDTH // 2,
                                    "qk_nope_head_dim": WIDTH // HEADS // 2, "qk_rope_head_dim": WIDTH // HEADS // 2,
                                    "v_head_dim": WIDTH // HEADS, "index_head_dim": WIDTH // HEADS, "index_n_heads": 2,
                                    "shared_experts_intermediate_size": FFN},
                    "vision_config": {"adapter_in_dim": WIDTH, "adapter_out_dim": WIDTH},
                    "audio_config": {"adapter_input_size": WIDTH, "adapter_out_dim": WIDTH,
                                     "downsample_hidden_size": WIDTH}},
                   "dots-studio/dots3-note-prev's adapters take their tower's width and write the text model's, and "
                   "its sliding-window head is its latent attention's two head parts: widths no shrunk key names, "
                   "shrunk together"),
    "diffusion_gemma": ({"text_config": {"num_experts": EXPERTS, "top_k_experts": 2, "moe_intermediate_size": FFN}},
                        "google/diffusiongemma-26B-A4B-it's text model routes each token to 8 of 128 experts of width "
                        "704 (its config.json's text_config), sizes its default config leaves None"),
    "emu3": ({"vocabulary_map": _image_code_vocabulary(lambda code: f"<|visual token {code:06d}|>", 64,
                                                       **{"<|extra_200|>": VOCAB - 2}),
              "vq_config": {"codebook_size": 64, "base_channels": WIDTH, "channel_multiplier": [1] * 4,
                            "num_res_blocks": 1}},
             "Emu3-community/Emu3-Chat-hf's config maps its tokenizer's visual tokens (<|visual token NNNNNN|>, one "
             "per code of its 32768-code VQ-VAE), <image> and its end-of-line token <|extra_200|> in vocabulary_map, "
             "which the default leaves None; here 64 codes and a narrow VQ-VAE (channels no shrunk key names)"),
    "ernie4_5_vl_moe": ({"text_config": {"moe_num_experts": EXPERTS,
                                         "rope_parameters": {"mrope_section": [1, 1, 2]}}},
                        "baidu/ERNIE-4.5-VL-28B-A3B-PT's rope sections (its code's default [22, 22, 20], for a "
                        "128-wide head) must fit the head, its height and width sections equal (its rotary "
                        "interleaves them pairwise), and its expert count is a key no shrunk key names"),
    "gemma3n": ({"text_config": {"num_kv_shared_layers": 0,
                                 "layer_types": ["sliding_attention"] * (LAYERS - 1) + ["full_attention"]},
                 "vision_config": {"model_args": {"channel_multiplier": 1 / 64}, "hidden_size": 2048}},
                "google/gemma-3n-E4B's last 15 of 35 layers reuse the caches of earlier layers of each kind; two "
                "layers cannot hold a producer of each kind and a consumer, so here a sliding and a full layer share "
                "none (and its tower, timm's MobileNetV5-300M, is narrowed by timm's channel multiplier: its output "
                "stays 2048 wide, the width its embedder reads)"),
    "gemma3": ({"mm_tokens_per_image": 49},
               "google/gemma-3-4b-it pools its tower's 64 by 64 patches to 16 by 16 image tokens "
               "(mm_tokens_per_image 256); the shrunk tower's 14 by 14 patches pool to 7 by 7 (49)"),
    "granite4_vision": ({"deepstack_layer_map": [[LAYERS - 1, 0]], "downsample_rate": "1/2",
                         "vision_config": {"hidden_size": 64}},
                        "ibm-granite/granite-vision-4.1-4b maps vision layers to the language layers their features "
                        "enter (one Q-Former downsampler each) and sets the rate they downsample by; the default "
                        "leaves both None (and its Q-Former takes a head per 64 vision channels)"),
    "hunyuan_vl": ({"text_config": {"head_dim": WIDTH // HEADS}},
                   "tencent/HunyuanOCR sets head_dim, which its attention reads as given; the default leaves it None"),
    "hy_v4_vl": ({"text_config": {"q_lora_rank": WIDTH, "kv_lora_rank": WIDTH // 2, "qk_nope_head_dim": WIDTH // HEADS,
                                  "qk_rope_head_dim": WIDTH // HEADS, "v_head_dim": WIDTH // HEADS,
                                  "index_head_dim": WIDTH // 2, "index_n_heads": 2,
                                  "rope_parameters": {"mrope_section": _sections(WIDTH // HEADS, 3)}}},
                 "tencent/Hy4's attention is multi-head latent attention, whose ranks and head parts no shrunk key "
                 "names, and its rope sections must cover the rope part of the head (qk_rope_head_dim): shrunk "
                 "together"),
    "inkling_mm_model": ({"text_config": {"swa_num_attention_heads": HEADS, "swa_num_key_value_heads": KV_HEADS,
                                          "swa_head_dim": WIDTH // HEADS}},
                         "thinkingmachines/Inkling's sliding-window attention layers have heads of their own (64 of "
                         "128 wide, 16 for keys and values), keys no shrunk key names: shrunk as its other heads"),
    "kimi_k25": ({"projection_hidden_size": WIDTH,
                  "text_config": {"q_lora_rank": WIDTH, "kv_lora_rank": WIDTH // 2, "qk_nope_head_dim": WIDTH // HEADS,
                                  "qk_rope_head_dim": WIDTH // HEADS, "v_head_dim": WIDTH // HEADS}},
                 "moonshotai/Kimi-K2.6's projector normalises its tower's output (projection_hidden_size 1152, the "
                 "tower's width), and its text model's attention is multi-head latent attention, whose rope part of "
                 "the head (qk_rope_head_dim) is the head_dim its rotary embedding reads: sizes no shrunk key names, "
                 "shrunk together"),
    "mllama": ({"vision_config": {"vision_output_dim": WIDTH * (1 + 1), "image_size": 56}},
               "meta-llama/Llama-3.2-11B-Vision's tower writes its last layer's output beside the outputs of its "
               "intermediate layers (5, 1280 wide each: vision_output_dim 7680); here one intermediate layer is left "
               "(and its tiles are 56 pixels, 4 by 4 patches, not 560)"),
    "molmo2": ({"adapter_config": {"vision_feature_layer": [LAYERS - 1, 0]}},
               "allenai/Molmo2-8B's adapter reads two vision layers (the 25th and 19th of its tower), which must be "
               "layers the tower has: here the shrunk tower's last and first"),
    "fun_asr_nano": ({"adaptor_config": {"intermediate_size": WIDTH // 4}},
                     "transformers' own check of FunAsrNano's config asks that its adaptor's intermediate size be a "
                     "quarter of the language model's width"),
    "perception_lm": ({"vision_config": {"architecture": "vit_pe_core_large_patch14_336", "num_classes": 0,
                                         "do_pooling": False, "model_args": {
                                             "embed_dim": WIDTH, "depth": LAYERS, "num_heads": HEADS, "img_size": 32,
                                             "patch_size": 16, "ref_feat_shape": [2, 2], "global_pool": "",
                                             "use_post_transformer_norm": False, "init_values": 0.1}}},
                      "facebook/Perception-LM-1B's tower is timm's vit_pe_core with its sizes in model_args, whose "
                      "embed_dim its projector reads; the default tower is a resnet50 with none"),
    "step3p7": ({"text_config": {"sliding_window": 512}},
                "stepfun-ai/Step-3.7-Flash's sliding-attention layers mask a window its default config leaves None; "
                "512 is Step-3.5-Flash's (Modular's Step3p5Config documents its default sliding_window=512)"),
    "vipllava": ({"vision_feature_layer": [-2, -3, -1, 0, 1]},
                 "llava-hf/vip-llava-7b-hf's projector reads five layers of its tower's 25 hidden states "
                 "([-2, -5, -8, -11, 6]); here five of the shrunk tower's 3"),
}


def _model_default_rope_sections(config, model_type: str):
    """`config` with the multimodal rope sections its model's code defaults to (Qwen2-VL's [16, 24, 24], sized for
    the full head) written into each sub-config that takes `mrope_section` but holds none, split over the shrunk head
    as _shrink splits the sections a config holds. The default is read from the model built on the meta device."""
    wanting = [c for c in (config, *(getattr(config, k, None) for k in config.sub_configs))
               if isinstance(getattr(c, "rope_parameters", None), dict) and "mrope_section" not in c.rope_parameters]
    if not wanting:
        return config
    with torch.device("meta"):
        model = model_class(model_type)._from_config(config)
    for module in model.modules():
        default, owner = getattr(module, "mrope_section", None), getattr(module, "config", None)
        for c in wanting:
            if isinstance(default, list) and type(owner) is type(c) and _head_size(c.to_dict()):
                rotary = _rotary_size(_head_size(c.to_dict()), c.rope_parameters)
                c.rope_parameters["mrope_section"] = _sections(rotary, len(default))
    return config


def _cut_per_layer(values: list, left: int) -> list:
    """A list of one entry per layer cut to the first `left` layers; where its entries are layer kinds and the cut
    keeps no plain attention layer (full or sliding: Qwen3.5's first layers are all linear attention), its last entry
    is the first plain attention kind of the full list: a model with no attention cache does not generate. The kinds
    are read from transformers' cache table; other attention kinds (indexed) need sizes of their own, left alone."""
    from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, DynamicLayer, DynamicSlidingWindowLayer

    cut = values[:left]
    if not all(isinstance(v, str) and v in DYNAMIC_LAYER_TYPE_MAPPING for v in values):
        return cut
    plain = [v for v in values if DYNAMIC_LAYER_TYPE_MAPPING[v] in (DynamicLayer, DynamicSlidingWindowLayer)]
    return cut if not plain or set(cut) & set(plain) else cut[:-1] + plain[:1]


def _ids_inside_the_text_vocabulary(data: dict) -> dict:
    """`data` with its top-level token ids (`image_token_id`, ...) that the shrunk text vocabulary no longer holds
    moved to free ids at its top: the model looks them up in its embeddings when it runs."""
    text = data.get("text_config")
    vocab = text.get("vocab_size") if isinstance(text, dict) else None
    if type(vocab) is not int:
        return data
    used = {v for k, v in text.items() if k.endswith(("_token_id", "_token_index")) and type(v) is int}
    free = (i for i in range(vocab - 1, -1, -1) if i not in used)
    return {k: next(free) if k.endswith(("_token_id", "_token_index")) and type(v) is int and v >= vocab else v
            for k, v in data.items()}


def with_default_vision(config: T.PretrainedConfig) -> T.PretrainedConfig:
    """`config` with each vision sub-config its class declares optional but leaves None filled with that
    sub-config's own defaults (in place): gemma4's default config has no vision tower, its checkpoints do."""
    for key, spec in getattr(type(config), "sub_configs_defaults", {}).items():
        if "vision" in key and getattr(config, key, None) is None:
            setattr(config, key, spec.create_subconfig(key)[0])
    return config


def _placeholder_ids_set(data: dict, model_type: str) -> dict:
    """`data` with each placeholder id of the model's input modalities (`image_token_id`, `video_token_id`) that the
    default config leaves None (MiniCPM-V's; the hub's config sets it) at a free id at the top of the text
    vocabulary: the model finds its features' places by it."""
    text = data.get("text_config")
    vocab = text.get("vocab_size") if isinstance(text, dict) else None
    keys = [f"{m}_token{end}" for m in getattr(model_class(model_type), "input_modalities", ()) if m != "text"
            for end in ("_id", "_index")]
    unset = [k for k in keys if k in data and data[k] is None]
    if type(vocab) is not int or not unset:
        return data
    used = {v for c in (text, data) for k, v in c.items()
            if k.endswith(("_token_id", "_token_index")) and type(v) is int}
    free = (i for i in range(vocab - 1, -1, -1) if i not in used)
    return {**data, **{k: next(free) for k in unset}}


def _image_fits_its_merge(data: dict) -> dict:
    """`data` with its vision config's image size, where it holds a whole number of patches a side, rounded up to a
    whole number of merged patches: Idefics3's default 224-pixel image holds 7 patches of 32 a side, which its
    scale_factor 2 cannot pixel-shuffle."""
    vision = data.get("vision_config")
    size, patch = (vision.get("image_size"), vision.get("patch_size")) if isinstance(vision, dict) else (None, None)
    if type(size) is not int or type(patch) is not int or size % patch:
        return data
    factor = next((c[k] for c in (data, vision) for k in MERGE_FACTORS if type(c.get(k)) is int and c[k] > 1), 1)
    side = -(-(size // patch) // factor) * factor * patch
    return data if side == size else {**data, "vision_config": {**vision, "image_size": side}}


def tiny_config(model_type: str) -> T.PretrainedConfig:
    """The type's default config, its vision sub-config filled in where the default leaves it out, shrunk (see the
    module docstring)."""
    config = with_default_vision(T.AutoConfig.for_model(model_type))
    data = _placeholder_ids_set(_ids_inside_the_text_vocabulary(_shrink(config.to_dict())), model_type)
    data = _image_fits_its_merge(data)
    data = _merged(data, OVERRIDES.get(model_type, ({}, ""))[0])
    data.pop("model_type", None)
    return _model_default_rope_sections(type(config).from_dict(data), model_type)


def _merged(data: dict, override: dict) -> dict:
    """`data` with `override`'s keys set; a dict set on a key that holds a dict is merged into it key by key."""
    return {**data, **{k: _merged(data[k], v) if isinstance(v, dict) and isinstance(data.get(k), dict) else v
                       for k, v in override.items()}}


MAPPINGS = ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES")  # the latter
# adds the audio-text models (Voxtral, Qwen2-Audio, the Qwen omni models whole)


def model_class(model_type: str) -> type:
    """The type's image-text-to-text class, else its multimodal LM class (an audio-text model)."""
    return getattr(T, next(getattr(modeling_auto, m)[model_type] for m in MAPPINGS
                           if model_type in getattr(modeling_auto, m)))


def tiny_any(model_type: str, seed: int = 0):
    """A random tiny model of the type's image-text-to-text class."""
    torch.manual_seed(seed)
    return model_class(model_type)._from_config(tiny_config(model_type)).eval()


def perturb_(model, seed: int = 1, scale: float = 0.05):
    """The model as a fine-tune of itself: every parameter plus seeded noise (in place; returns the model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)
    return model
