"""One contract for every adapter and every family row (as timm's tests run one body over its registry):
detected by the right adapter, read without reading tensor data, written back exactly, and loaded strictly
by transformers after writing."""

import json

import pytest
import torch
import transformers

import tiny_families as F
from mmmerge.adapters import (detect_adapter, hf_causal_lm, hf_multimodal, hf_vision, hf_whole, open_checkpoint,
                              open_clip_vision, timm_vision)
from mmmerge.adapters.hf_export import model_class, save_hf
from mmmerge.io import reader
from mmmerge.io.writer import write_safetensors
from open_clip_sources import VISION, make_folder
from timm_sources import SMALL, make_timm
from tiny import clip_vision_config, llama_config, randomize
from tiny_whole import save_model


def causal_lm(path):
    randomize(transformers.LlamaForCausalLM(llama_config())).save_pretrained(path)


def clip_vision(path):
    randomize(transformers.CLIPVisionModel(clip_vision_config())).save_pretrained(path)


def siglip_vision(path):
    cfg = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, image_size=32, patch_size=8)
    randomize(transformers.SiglipVisionModel(cfg)).save_pretrained(path)


BUILDERS = {
    "hf_causal_lm": (hf_causal_lm, causal_lm),
    "hf_vision/clip": (hf_vision, clip_vision),
    "hf_vision/siglip": (hf_vision, siglip_vision),
    "open_clip": (open_clip_vision, lambda p: make_folder(p, VISION)),
    "timm/siglip": (timm_vision, lambda p: make_timm(p, "vit_base_patch16_siglip_224", SMALL)),
    **{f"family/{t}": (hf_multimodal, lambda p, t=t: F.save_tiny(t, p)) for t in sorted(F.CONFIGS)},
    # types with no component split whatever the family table holds (the test of every other one forces it)
    **{f"whole/{t}": (hf_whole, lambda p, t=t: save_model(t, p, seed=0)) for t in ("pi0", "vision-encoder-decoder")},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    made = {}

    def get(case):
        if case not in made:
            path = tmp_path_factory.mktemp(case.replace("/", "-")) / "src"
            BUILDERS[case][1](path)
            made[case] = path
        return made[case]

    return get


def weights(folder):
    return {k: t.load() for k, t in reader.read_folder(folder, names=(*reader.FOLDER_WEIGHTS,
                                                                     "open_clip_model.safetensors")).items()}


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_contract(case, built, tmp_path, monkeypatch):
    adapter, _ = BUILDERS[case]
    path = built(case)
    assert detect_adapter(path) is adapter

    # lazy: opening a checkpoint reads no tensor data (every read goes through reader._read_range)
    reads = []
    original = reader._read_range
    monkeypatch.setattr(reader, "_read_range", lambda *a: reads.append(a[0]) or original(*a))
    ckpt = open_checkpoint(path)
    assert ckpt.components and not reads

    # exact round trip in the source's own layout
    adapter.write_source(ckpt, tmp_path / "back")
    before, after = weights(path), weights(tmp_path / "back")
    assert reads  # the counter sees the reads the round trip does
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)

    # strict load after writing: the whole family checkpoint, or each component as its own transformers folder
    if ckpt.whole is not None:
        folders = {ckpt.component(hf_whole.COMPONENT).arch: tmp_path / "back"}
    elif ckpt.family is not None:
        out = tmp_path / "family"
        out.mkdir()
        (out / "config.json").write_text(json.dumps(ckpt.source_config["config.json"]))
        write_safetensors(out, {**hf_multimodal.family_tensors(ckpt.family, ckpt.components), **ckpt.outside})
        folders = {ckpt.family.cls: out}
    else:
        folders = {}
        for name, component in ckpt.components.items():
            save_hf(component, tmp_path / name)
            folders[component.arch] = tmp_path / name
    for cls, folder in folders.items():
        _, info = model_class(cls).from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (cls, info)
