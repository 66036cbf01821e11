"""LLaVA checkpoints in every key layout, split into components that run like the LLaVA's own parts."""

import pytest
import torch
import transformers
from safetensors.torch import load_file

from mmmerge.adapters import detect_adapter, hf_multimodal, open_checkpoint
from mmmerge.adapters.hf_export import save_hf
from tiny import llava_config, max_diff, randomize, rename_keys


def to_current(key: str) -> str:
    """transformers' in-memory names, as some tools save them."""
    if key.startswith("language_model.lm_head."):
        return key[len("language_model."):]
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    return "model." + key


def to_hub_legacy(key: str) -> str:
    """llava-hf checkpoints on the hub wrap the CLIP tower in `vision_model`."""
    return "vision_tower.vision_model." + key[len("vision_tower."):] if key.startswith("vision_tower.") else key


LAYOUTS = {"saved": None, "current": to_current, "hub_legacy": to_hub_legacy}


@pytest.fixture(scope="module")
def llava():
    torch.manual_seed(0)
    return randomize(transformers.LlavaForConditionalGeneration(llava_config()))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_llava_components_run_like_the_llava(layout, llava, tmp_path):
    src = tmp_path / "src"
    llava.save_pretrained(src)
    if LAYOUTS[layout]:
        rename_keys(src / "model.safetensors", LAYOUTS[layout])
    assert detect_adapter(src) is hf_multimodal
    ckpt = open_checkpoint(src)
    assert set(ckpt.components) == {"vision", "projector", "language"} and not ckpt.outside
    vision, projector, language = (ckpt.component(c) for c in ("vision", "projector", "language"))
    assert (vision.arch, language.arch) == ("CLIPVisionModel", "LlamaForCausalLM")

    # projector: the LLaVA's own module
    for name, p in llava.model.multi_modal_projector.state_dict().items():
        assert torch.equal(projector.tensors[name].load(), p), name
    assert projector.config["projector_hidden_act"] == "gelu" and projector.config["vision_feature_layer"] == -2

    # vision tower: every hidden state as inside the LLaVA
    save_hf(vision, tmp_path / "vision")
    tower, info = transformers.CLIPVisionModel.from_pretrained(tmp_path / "vision", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = llava.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        got = tower(pixels, output_hidden_states=True).hidden_states
    assert all(max_diff(a, b) <= 1e-5 for a, b in zip(got, want))

    # language model: text-only logits as the LLaVA gives them
    save_hf(language, tmp_path / "language")
    lm, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "language", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(0, 120, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_diff(lm(ids).logits, llava(input_ids=ids).logits) <= 1e-5

    # exact round trip in the layout it came in, which transformers still loads
    hf_multimodal.write_source(ckpt, tmp_path / "back")
    original, again = load_file(src / "model.safetensors"), load_file(tmp_path / "back/model.safetensors")
    assert set(original) == set(again) and all(torch.equal(original[k], again[k]) for k in original)


@pytest.mark.parametrize("layout", ["memory", "saved", "hub"])
def test_llava_tensors_from_components_load_in_transformers(layout, llava, tmp_path):
    import json
    from mmmerge.io import write_safetensors

    llava.save_pretrained(tmp_path / "src")
    ckpt = open_checkpoint(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    write_safetensors(out, hf_multimodal.family_tensors(ckpt.family, ckpt.components, layout))
    (out / "config.json").write_text(json.dumps(ckpt.source_config["config.json"]))
    loaded, info = transformers.LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(0, 120, (1, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert max_diff(loaded(input_ids=ids).logits, llava(input_ids=ids).logits) <= 1e-5
