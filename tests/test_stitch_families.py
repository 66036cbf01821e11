"""`stitch --vision` from the vision towers of multimodal families: the LLaVA holds the tower and computes what the
family's own tower computes; towers a LLaVA cannot hold are refused in one line that says why."""

import pytest
import torch
import transformers

import tiny_families as F
from mmmerge import stitch
from mmmerge.errors import MMMergeError
from stitch_parts import PROMPT, image, make_lm

HELD = ["llava", "llava_next", "llava_onevision", "gemma3", "paligemma", "aya_vision", "idefics3", "smolvlm", "internvl"]
REFUSED = {"qwen2_5_vl": "flattened patches", "qwen3_vl": "flattened patches", "glm4v": "flattened patches",
           "mllama": "aspect ratios", "mistral3": "images of any size"}


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return make_lm(tmp_path_factory.mktemp("lm"))


@pytest.mark.parametrize("model_type", HELD)
def test_a_family_tower_in_a_llava(model_type, lm, tmp_path):
    family_model = F.save_tiny(model_type, tmp_path / "src")
    stitch(tmp_path / "src", lm, tmp_path / "out", projector_type="mlp2x_gelu", progress=False)
    llava, info = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "out")
    enc = processor(images=[image((40, 40))], text=[PROMPT], return_tensors="pt")
    with torch.no_grad():
        llava(**enc)  # as many image tokens as image features, or the model raises
        pixels = enc["pixel_values"]
        want = F.vision_module(family_model, model_type)(pixels, output_hidden_states=True).hidden_states
        got = llava.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_a_tower_llava_cannot_hold_is_refused(model_type, lm, tmp_path):
    F.save_tiny(model_type, tmp_path / "src")
    with pytest.raises(MMMergeError, match=REFUSED[model_type]) as e:
        stitch(tmp_path / "src", lm, tmp_path / "out", projector_type="mlp2x_gelu", progress=False)
    assert "a LLaVA checkpoint cannot hold it" in str(e.value) and not (tmp_path / "out").exists()
