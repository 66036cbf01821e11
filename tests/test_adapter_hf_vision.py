"""transformers vision towers: every key layout read, written as the bare tower, hidden states unchanged."""

import pytest
import torch
import transformers
from safetensors.torch import load_file

from mmmerge.adapters import detect_adapter, hf_vision, open_checkpoint
from mmmerge.adapters.hf_export import save_hf
from tiny import clip_vision_config, max_diff, randomize, rename_keys

V = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
T = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64,
         bos_token_id=0, eos_token_id=1, pad_token_id=1, max_position_embeddings=16)


def make(kind):
    """(source model, the bare tower inside it, the bare tower class)"""
    if kind == "clip_vision":
        m = transformers.CLIPVisionModel(clip_vision_config())
        return m, m, transformers.CLIPVisionModel
    if kind == "clip_full":
        m = transformers.CLIPModel(transformers.CLIPConfig(vision_config=V, text_config=T, projection_dim=16))
        return m, m.vision_model, transformers.CLIPVisionModel
    if kind == "siglip_vision":
        m = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**V))
        return m, m, transformers.SiglipVisionModel
    if kind == "siglip_full":
        m = transformers.SiglipModel(transformers.SiglipConfig(vision_config=V, text_config=T))
        return m, m.vision_model, transformers.SiglipVisionModel
    if kind == "dinov2":
        m = transformers.Dinov2Model(transformers.Dinov2Config(**{**V, "patch_size": 4, "layerscale_value": 0.5}))
        return m, m, transformers.Dinov2Model
    if kind == "vit":
        m = transformers.ViTModel(transformers.ViTConfig(**V))
        return m, m, transformers.ViTModel
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["clip_vision", "clip_full", "siglip_vision", "siglip_full", "dinov2", "vit"])
def test_vision_tower_hidden_states_survive(kind, tmp_path):
    torch.manual_seed(0)
    src_model, tower, cls = make(kind)
    randomize(src_model)
    src_model.save_pretrained(tmp_path / "src")
    assert detect_adapter(tmp_path / "src") is hf_vision
    ckpt = open_checkpoint(tmp_path / "src")
    vision = ckpt.component("vision")
    assert vision.arch == cls.__name__
    assert vision.num_params - sum(ckpt.outside[k].numel for k in ()) >= sum(p.numel() for p in tower.parameters())

    left_out = save_hf(vision, tmp_path / "out")
    assert left_out == (["visual_projection.weight"] if kind == "clip_full" else [])
    loaded, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = tower(pixel_values=pixels, output_hidden_states=True)
        got = loaded(pixel_values=pixels, output_hidden_states=True)
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert max_diff(a, b) <= 1e-5
    if getattr(want, "pooler_output", None) is not None:
        assert max_diff(got.pooler_output, want.pooler_output) <= 1e-5

    hf_vision.write_source(ckpt, tmp_path / "back")
    original, again = load_file(tmp_path / "src/model.safetensors"), load_file(tmp_path / "back/model.safetensors")
    assert set(original) == set(again) and all(torch.equal(original[k], again[k]) for k in original)


def test_older_prefixed_layout_and_preprocessor(tmp_path):
    """CLIPVisionModel folders written before transformers 5 hold `vision_model.*` keys."""
    model = randomize(transformers.CLIPVisionModel(clip_vision_config()))
    model.save_pretrained(tmp_path / "src")
    rename_keys(tmp_path / "src/model.safetensors", lambda k: "vision_model." + k)
    transformers.CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                    image_mean=[0.1, 0.2, 0.3]).save_pretrained(tmp_path / "src")
    vision = open_checkpoint(tmp_path / "src").component("vision")
    assert torch.equal(vision.tensors["post_layernorm.weight"].load(), model.post_layernorm.weight)
    assert vision.preprocess["resize"] == 36 and vision.preprocess["image_size"] == [32, 32]
    assert vision.preprocess["mean"] == pytest.approx([0.1, 0.2, 0.3])
    save_hf(vision, tmp_path / "out")
    proc = transformers.AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert proc.size["shortest_edge"] == 36 and proc.crop_size["height"] == 32
