"""The tensors mmmerge requires of a class's files are the ones transformers' save path writes, tied aliases
included: Diffusion Gemma ties its text encoder to its decoder and declares the encoder's names as the tied ones, so
its files hold the decoder's names, though torch lists the encoder's first."""

import pytest
from safetensors import safe_open

import tiny_any_family
from mmmerge.adapters.hf_export import file_layout, memory_layout
from tiny_any_family import tiny_any

# google/diffusiongemma-26B-A4B-it's text model is a mixture of experts; the default config leaves its sizes None.
EXPERTS = {"text_config": {"num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 16}}


@pytest.mark.parametrize("model_type", ["diffusion_gemma", "paligemma"])
def test_required_names_are_the_ones_transformers_saves(model_type, tmp_path, monkeypatch):
    monkeypatch.setitem(tiny_any_family.OVERRIDES, "diffusion_gemma", (EXPERTS, "its sizes, for this test"))
    model = tiny_any(model_type)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    required, optional = file_layout(model)
    assert set(required) == saved
    assert optional  # each class ties something: the check is not empty
    in_memory, tied = memory_layout(model)
    assert set(in_memory) | set(tied) == set(model.state_dict()) and not set(in_memory) & set(tied)
