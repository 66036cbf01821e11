"""Stitched LLaVA folders: transformers loads them with no missing keys, the tower computes what the source library
computes, the processor matches the encoder's own preprocessing and counts as many image tokens as there are
image features, the LLM is unchanged on its old vocabulary, and generation runs."""

import copy
import json

import open_clip
import pytest
import timm
import timm.data
import torch
import torch.nn.functional as F
import transformers

from mmmerge import stitch
from tiny import max_diff, randomize
from open_clip_sources import VISION, make_folder, open_clip_states
from stitch_parts import PROMPT, image, make_lm
from timm_sources import SMALL, make_timm, timm_forward

# ---- source encoders: (hidden states as the source library computes them, its own preprocessing) ----------------

def open_clip_source(folder):
    make_folder(folder, VISION)
    model = open_clip.create_model(f"local-dir:{folder}").eval()
    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return (lambda px: open_clip_states(model, px)[0]), transform


def timm_siglip_source(folder):
    make_timm(folder, "vit_base_patch16_siglip_224", SMALL, 0)
    # crop_pct 0.9 gives 35 -> 32: an odd margin, which torchvision's center crop rounds up and transformers' rounds
    # down (a one-pixel shift no image processor config expresses); full-size models have even margins (248 -> 224)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["crop_pct"] = 1.0
    (folder / "config.json").write_text(json.dumps(config))
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # what timm reads from the folder
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    return (lambda px: timm_forward(model, px)[0]), transform


def hf_clip_source(folder):
    """A full transformers CLIP (text tower included) with its own image processor."""
    v = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
             patch_size=8)
    t = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64,
             max_position_embeddings=16)
    torch.manual_seed(0)
    model = randomize(transformers.CLIPModel(transformers.CLIPConfig(vision_config=v, text_config=t, projection_dim=16)))
    model.save_pretrained(folder)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                                image_mean=[0.3, 0.4, 0.5], image_std=[0.2, 0.25, 0.3])
    processor.save_pretrained(folder)

    def states(px):
        with torch.no_grad():
            return model.vision_model(pixel_values=px, output_hidden_states=True).hidden_states

    return states, lambda img: processor(images=img, return_tensors="pt")["pixel_values"][0]


# name: (source, feature layer (None: default -2), LLaVA selection, additional tokens, tied LM)
CASES = {
    "open_clip": (open_clip_source, None, "default", 1, False),
    "timm_siglip": (timm_siglip_source, -1, "full", 0, False),
    "hf_clip": (hf_clip_source, 1, "default", 1, True),
}


def check_language(model, processor, lm_dir, tied):
    """Old vocabulary unchanged, rows grown as transformers' resize would, new rows near the old rows' mean."""
    src = transformers.LlamaForCausalLM.from_pretrained(lm_dir).eval()
    src_tok = transformers.AutoTokenizer.from_pretrained(lm_dir)
    n = len(src_tok)
    oracle = copy.deepcopy(src)
    oracle.resize_token_embeddings(len(processor.tokenizer), pad_to_multiple_of=64)
    old, new = src.get_input_embeddings().weight, model.get_input_embeddings().weight
    assert new.shape == oracle.get_input_embeddings().weight.shape and new.shape[0] % 64 == 0 and new.shape[0] > n
    assert model.config.text_config.vocab_size == new.shape[0]
    assert torch.equal(new[:n], old)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    if not tied:
        assert torch.equal(model.lm_head.weight[:n], src.lm_head.weight)
    mu, spread = old.mean(0), (old - old.mean(0)).norm(dim=1).mean()
    added = new[n:]
    assert ((added - mu).norm(dim=1) < 0.05 * spread).all() and added.std(0).max() > 0

    ids = src_tok("a red square on a blue field", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert max_diff(model(input_ids=ids).logits[..., :n], src(input_ids=ids).logits) <= 1e-5
    tok = processor.tokenizer
    assert tok("a red square")["input_ids"] == src_tok("a red square")["input_ids"]
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_id >= n
    assert tok.pad_token == src_tok.pad_token
    assert processor.chat_template == src_tok.chat_template


@pytest.mark.parametrize("case", CASES)
def test_stitched_llava_runs_like_its_sources(case, tmp_path):
    source, layer, strategy, additional, tied = CASES[case]
    states, transform = source(tmp_path / "vision")
    lm_dir = make_lm(tmp_path / "lm", tied=tied)
    report = stitch(tmp_path / "vision", lm_dir, tmp_path / "out", projector_type="mlp2x_gelu",
                    vision_feature_layer=layer, progress=False)
    layer = -2 if layer is None else layer

    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "out")
    assert type(processor).__name__ == "LlavaProcessor"
    cfg = model.eval().config
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy, cfg.projector_hidden_act) == (layer, strategy, "gelu")
    assert processor.num_additional_image_tokens == additional and processor.vision_feature_select_strategy == strategy
    assert processor.patch_size == cfg.vision_config.patch_size
    assert cfg.image_token_id == processor.image_token_id == report.image_token_id

    # the tower's hidden states are the source library's
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    want = states(px)
    with torch.no_grad():
        got = model.model.vision_tower(pixel_values=px, output_hidden_states=True).hidden_states
        feats = torch.stack(model.model.get_image_features(pixel_values=px).pooler_output)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(want, got)):
        assert a.shape == b.shape and max_diff(a, b) <= 1e-4, f"hidden state {i}"
    # the projector sees the chosen layer of the source's states, the class token dropped only when there is one
    selected = want[layer][:, 1:] if strategy == "default" else want[layer]
    p = model.model.multi_modal_projector
    expected = F.linear(F.gelu(F.linear(selected, p.linear_1.weight, p.linear_1.bias)), p.linear_2.weight, p.linear_2.bias)
    assert max_diff(feats, expected) <= 1e-4
    assert feats.shape[1] == cfg.image_seq_length == report.image_seq_length == 16

    # the processor: the encoder's own preprocessing, one <image> token per image feature
    exact, resized = image((32, 32)), image((45, 37), seed=1)
    inputs = processor(images=exact, text=PROMPT, return_tensors="pt")
    assert int((inputs["input_ids"] == cfg.image_token_id).sum()) == feats.shape[1]
    assert max_diff(inputs["pixel_values"][0], transform(exact)) <= 1e-5
    assert max_diff(processor(images=resized, text=PROMPT, return_tensors="pt")["pixel_values"][0], transform(resized)) <= 0.06
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3

    check_language(model, processor, lm_dir, tied)
    chat = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "what color is the shape ?"}]}], add_generation_prompt=True)
    batch = processor(images=[exact, resized], text=[chat, PROMPT], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape[0] == 2
