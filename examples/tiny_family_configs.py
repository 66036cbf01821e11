"""Tiny configs of every multimodal family mmmerge reads, each built from the family's own transformers config
class: the smallest that builds (two text layers, two vision layers, hidden size 32), so every command can be
tried on a real architecture in a second, offline.

The tests build their models from these configs too (tests/tiny_families.py); a family added to mmmerge's table
gets a row here (tests/test_examples.py checks that every family has one).
"""

from __future__ import annotations

import transformers as T

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=160, max_position_embeddings=256, head_dim=8,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
IMAGE_TOKEN = 150


def _text(cls, **kw):
    return cls(**{**TEXT, **kw}).to_dict()


def _siglip(**kw):
    return T.SiglipVisionConfig(**{**VIT, "image_size": 32, "patch_size": 8, **kw}).to_dict()


def _clip(**kw):
    return T.CLIPVisionConfig(**{**VIT, "image_size": 32, "patch_size": 8, **kw}).to_dict()


def _llava(**kw):
    return T.LlavaConfig(vision_config=_clip(), text_config=_text(T.LlamaConfig), image_token_index=IMAGE_TOKEN, **kw)


def _llava_next():
    return T.LlavaNextConfig(vision_config=_clip(), text_config=_text(T.MistralConfig),
                             image_token_index=IMAGE_TOKEN, image_grid_pinpoints=[[32, 32], [32, 64]])


def _llava_onevision():
    return T.LlavaOnevisionConfig(vision_config=_siglip(), text_config=_text(T.Qwen2Config),
                                  image_token_index=IMAGE_TOKEN, video_token_index=IMAGE_TOKEN + 1,
                                  image_grid_pinpoints=[[32, 32], [32, 64]], vision_feature_layer=-1)


def _qwen_vision(**kw):
    return dict(depth=2, hidden_size=32, embed_dim=32, num_heads=4, intermediate_size=64, patch_size=4,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3, **kw)


def _qwen2_vl():
    return T.Qwen2VLConfig(text_config=_text(T.Qwen2VLTextConfig, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                           vision_config=dict(_qwen_vision(), mlp_ratio=2), image_token_id=IMAGE_TOKEN,
                           video_token_id=IMAGE_TOKEN + 1, vision_start_token_id=IMAGE_TOKEN + 2)


def _qwen2_5_vl():
    return T.Qwen2_5_VLConfig(text_config=_text(T.Qwen2_5_VLTextConfig, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                              vision_config=dict(_qwen_vision(), out_hidden_size=32, fullatt_block_indexes=[1],
                                                 window_size=16),
                              image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN + 1,
                              vision_start_token_id=IMAGE_TOKEN + 2)


def _qwen3_vl():
    return T.Qwen3VLConfig(text_config=_text(T.Qwen3VLTextConfig, rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2]}),
                           vision_config=dict(_qwen_vision(), out_hidden_size=32, num_position_embeddings=64,
                                              deepstack_visual_indexes=[0]),
                           image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN + 1,
                           vision_start_token_id=IMAGE_TOKEN + 2)


def _qwen3_vl_moe():
    """Qwen3-VL-MoE: Qwen3-VL with a sparse MoE language model (three experts, two per token)."""
    dense = _qwen3_vl().to_dict()
    text = T.Qwen3VLMoeTextConfig(**{**dense["text_config"], "num_experts": 3, "num_experts_per_tok": 2,
                                     "moe_intermediate_size": 64, "decoder_sparse_step": 1, "mlp_only_layers": []})
    return T.Qwen3VLMoeConfig(**{**dense, "text_config": text.to_dict()})


def _gemma3():
    return T.Gemma3Config(text_config=_text(T.Gemma3TextConfig, sliding_window=16), vision_config=_siglip(),
                          mm_tokens_per_image=4, image_token_index=IMAGE_TOKEN, boi_token_index=IMAGE_TOKEN + 1,
                          eoi_token_index=IMAGE_TOKEN + 2)


def _paligemma():
    return T.PaliGemmaConfig(text_config=_text(T.GemmaConfig), vision_config=_siglip(projection_dim=32),
                             image_token_index=IMAGE_TOKEN, projection_dim=32)


def _idefics_like(config_cls, vision_cls):
    """Idefics3 and SmolVLM (a Llama, a SigLIP-style tower, a pixel-shuffle connector) differ only by class."""
    return lambda: config_cls(text_config=_text(T.LlamaConfig),
                              vision_config=vision_cls(**VIT, image_size=32, patch_size=8).to_dict(),
                              image_token_id=IMAGE_TOKEN, scale_factor=2)


_idefics3 = _idefics_like(T.Idefics3Config, T.Idefics3VisionConfig)
_smolvlm = _idefics_like(T.SmolVLMConfig, T.SmolVLMVisionConfig)


def _mistral3():
    return T.Mistral3Config(text_config=_text(T.MistralConfig),
                            vision_config=T.PixtralVisionConfig(**VIT, image_size=32, patch_size=8, head_dim=8).to_dict(),
                            image_token_index=IMAGE_TOKEN, spatial_merge_size=2)


def _internvl():
    return T.InternVLConfig(text_config=_text(T.Qwen2Config),
                            vision_config=T.InternVLVisionConfig(**VIT, image_size=32, patch_size=8).to_dict(),
                            image_token_id=IMAGE_TOKEN, downsample_ratio=0.5)


def _aya_vision():
    return T.AyaVisionConfig(text_config=_text(T.Cohere2Config), vision_config=_siglip(),
                             image_token_index=IMAGE_TOKEN, downsample_factor=2, alignment_intermediate_size=64)


def _mllama():
    return T.MllamaConfig(text_config=T.MllamaTextConfig(**{**TEXT, "num_hidden_layers": 3, "cross_attention_layers": [1]}).to_dict(),
                          vision_config=T.MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                             num_global_layers=1, attention_heads=4, image_size=32,
                                                             patch_size=8, max_num_tiles=2, vision_output_dim=64,
                                                             intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]]).to_dict(),
                          image_token_index=IMAGE_TOKEN)


def _glm4v():
    return T.Glm4vConfig(text_config=_text(T.Glm4vTextConfig, rope_parameters={"rope_type": "default", "mrope_section": [0, 1, 1], "partial_rotary_factor": 0.5}),
                         vision_config=dict(depth=2, hidden_size=32, num_heads=4, intermediate_size=64, patch_size=4,
                                            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32, image_size=32),
                         image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN + 1,
                         image_start_token_id=IMAGE_TOKEN + 2, image_end_token_id=IMAGE_TOKEN + 3)


CONFIGS = {
    "llava": _llava, "llava_next": _llava_next, "llava_onevision": _llava_onevision, "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl, "qwen3_vl": _qwen3_vl, "qwen3_vl_moe": _qwen3_vl_moe, "gemma3": _gemma3, "paligemma": _paligemma,
    "idefics3": _idefics3, "smolvlm": _smolvlm, "mistral3": _mistral3, "internvl": _internvl,
    "aya_vision": _aya_vision, "mllama": _mllama, "glm4v": _glm4v,
}


def tiny_config(model_type: str):
    return CONFIGS[model_type]()
