"""Tiny random models of transformers types mmmerge reads whole (adapters/hf_whole.py), each built from its own
config class: image-text-to-text families (one, gemma4, with a vision tower though transformers registers its class
as a causal LM too), encoder-decoder captioners and an action policy."""

import json

import torch
import transformers as T

from tiny_family_configs import IMAGE_TOKEN, TEXT, VIT, _clip, _paligemma, _siglip, _text
from tiny_tokenizer import make_tokenizer


def _idefics2():
    return T.Idefics2Config(vision_config=dict(VIT, image_size=32, patch_size=8), text_config=_text(T.MistralConfig),
                            perceiver_config=dict(hidden_size=32, resampler_n_latents=4, resampler_depth=1,
                                                  resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1),
                            image_token_id=IMAGE_TOKEN)


def _vipllava():
    return T.VipLlavaConfig(vision_config=_clip(), text_config=_text(T.LlamaConfig), image_token_index=IMAGE_TOKEN,
                            vision_feature_layers=[-2, -1])


def _gemma4():
    text = _text(T.Gemma4TextConfig, sliding_window=16, global_head_dim=8, vocab_size_per_layer_input=TEXT["vocab_size"],
                 hidden_size_per_layer_input=8)
    vision = T.Gemma4VisionConfig(**VIT, num_key_value_heads=4, head_dim=8, position_embedding_size=64, patch_size=8)
    tokens = dict(boi_token_id=IMAGE_TOKEN + 1, eoi_token_id=IMAGE_TOKEN + 2, video_token_id=IMAGE_TOKEN + 3,
                  boa_token_id=IMAGE_TOKEN + 4, eoa_token_index=IMAGE_TOKEN + 5, audio_token_id=IMAGE_TOKEN + 6)
    return T.Gemma4Config(text_config=text, vision_config=vision.to_dict(), image_token_id=IMAGE_TOKEN, **tokens)


def _t5gemma2():
    encoder = dict(text_config=_text(T.Gemma3TextConfig, sliding_window=16), vision_config=_siglip(),
                   mm_tokens_per_image=4)
    return T.T5Gemma2Config(encoder=encoder, decoder=_text(T.Gemma3TextConfig, sliding_window=16),
                            image_token_index=IMAGE_TOKEN, eoi_token_index=IMAGE_TOKEN + 2)


def _vision_encoder_decoder():
    decoder = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=TEXT["vocab_size"], n_positions=64,
                           bos_token_id=1, eos_token_id=2, add_cross_attention=True, is_decoder=True)
    encoder = T.ViTConfig(**{**VIT, "num_hidden_layers": 3}, image_size=32, patch_size=8)  # not the decoder's 2
    return T.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)


def _pi0():
    return T.PI0Config(vlm_config=_paligemma().to_dict(), dit_config=_text(T.GemmaConfig), max_action_dim=4,
                       max_state_dim=4, chunk_size=4)


CONFIGS = {"idefics2": _idefics2, "vipllava": _vipllava, "gemma4": _gemma4, "t5gemma2": _t5gemma2,
           "vision-encoder-decoder": _vision_encoder_decoder, "pi0": _pi0}


def save_model(model_type, path, *, seed, base=None, dtype=torch.float32, side=0):
    """A random model of the type (a fine-tune of `base`'s weights when given) with side files: a tokenizer, a
    generation config and a processor file whose content says which model wrote it (`side`)."""
    torch.manual_seed(0)
    model = T.AutoModelForImageTextToText.from_config(CONFIGS[model_type]())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if base is not None:
            model.load_state_dict(base.state_dict())
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model = model.to(dtype)
    model.save_pretrained(path)
    make_tokenizer(path)
    T.GenerationConfig(max_new_tokens=7 + side).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"written_by": side}))
    return model
