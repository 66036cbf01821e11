"""`mmmerge moe` on the dense -> MoE vision-language pairs the installed transformers ships, found from its classes.

Checked against transformers: the pairs are its image-text-to-text types whose MoE class holds fused experts and a
router; Qwen3.5 -> Qwen3.5-MoE loads strictly, each routed expert and the shared expert are their sources' dense MLPs,
everything else is the base's, and it generates; GLM-4.1V -> GLM-4.5V-MoE would drop the dense model's extra norms
and is refused in one line, with nothing written.
"""

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file

import tiny_families as F
from cli_run import one_line_error, run
from mmmerge import moe
from mmmerge.mixture.architectures import moe_pairs

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, vocab_size=160, linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=8,
            linear_value_head_dim=8, layer_types=["linear_attention", "full_attention"])
VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=4,
              spatial_merge_size=2, temporal_patch_size=1)
LAYER = "model.language_model.layers.{}.mlp."


def test_pairs_are_the_ones_transformers_ships():
    """Each pair's MoE class, built on the meta device from its own default config, holds fused experts and a router
    in its language model, and the dense class none; qwen3_vl -> qwen3_vl_moe is among them."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as ITT

    pairs = moe_pairs()
    assert pairs.get("qwen3_vl") == "qwen3_vl_moe"
    for dense, sparse in pairs.items():
        names = {}
        for model_type in (dense, sparse):
            config = CONFIG_MAPPING[model_type]()
            config.text_config.num_hidden_layers = 2  # GLM-4.5V keeps its first layer dense by default
            with torch.device("meta"):
                names[model_type] = set(getattr(transformers, ITT[model_type])._from_config(config).state_dict())
        assert any(n.endswith("mlp.experts.gate_up_proj") for n in names[sparse]), sparse
        assert any(n.endswith("mlp.gate.weight") for n in names[sparse]), sparse
        assert not any(".experts." in n for n in names[dense]), dense


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory):
    """A tiny dense Qwen3.5 VLM and two fine-tunes (every tensor their own), as transformers saves them."""
    if "qwen3_5" not in moe_pairs():
        pytest.skip("the installed transformers pairs no qwen3_5 with an MoE type")
    root = tmp_path_factory.mktemp("qwen35")
    config = transformers.Qwen3_5Config(text_config=TEXT, vision_config=VISION)
    for i in range(3):
        torch.manual_seed(i)
        transformers.Qwen3_5ForConditionalGeneration(config).save_pretrained(root / f"m{i}")
    return root


def test_qwen3_5_becomes_qwen3_5_moe_whose_parts_equal_their_sources(qwen35, tmp_path):
    base, a, b = (qwen35 / f"m{i}" for i in range(3))
    out = moe({"base_model": str(base), "gate_mode": "random", "experts_per_token": 1,
               "experts": [{"source_model": str(a)}, {"source_model": str(b)}],
               "shared_experts": [{"source_model": str(base)}]}, tmp_path / "moe", random_seed=0, quiet=True)
    model, info = transformers.Qwen3_5MoeForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    text = model.config.text_config
    assert (text.num_experts, text.num_experts_per_tok) == (2, 1)
    assert text.moe_intermediate_size == text.shared_expert_intermediate_size == TEXT["intermediate_size"]
    got = model.state_dict()
    dense = [transformers.Qwen3_5ForConditionalGeneration.from_pretrained(p).state_dict() for p in (base, a, b)]
    for layer in range(TEXT["num_hidden_layers"]):
        at = LAYER.format(layer)
        for e, source in enumerate(dense[1:]):
            gate_up = torch.cat([source[at + "gate_proj.weight"], source[at + "up_proj.weight"]])
            assert torch.equal(got[at + "experts.gate_up_proj"][e], gate_up)
            assert torch.equal(got[at + "experts.down_proj"][e], source[at + "down_proj.weight"])
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert torch.equal(got[at + f"shared_expert.{proj}.weight"], dense[0][at + f"{proj}.weight"])
        assert got[at + "gate.weight"].shape == (2, TEXT["hidden_size"]) and at + "shared_expert_gate.weight" in got
    outside = [k for k in dense[0] if ".mlp." not in k or "language_model" not in k]
    assert outside and all(torch.equal(got[k], dense[0][k]) for k in outside)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        answer = model.eval().generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert answer.shape == (1, 7)


def test_a_pair_whose_moe_class_lacks_dense_tensors_is_refused_before_reading(tmp_path):
    """GLM-4.1V's layers hold two extra norms that GLM-4.5V-MoE's lack: one line naming them, nothing written."""
    if moe_pairs().get("glm4v") != "glm4v_moe":
        pytest.skip("the installed transformers pairs no glm4v with glm4v_moe")
    models = []
    for i in range(3):
        F.save_tiny("glm4v", tmp_path / f"g{i}", seed=i)
        models.append(tmp_path / f"g{i}")
    cfg = {"base_model": str(models[0]), "gate_mode": "random",
           "experts": [{"source_model": str(m)} for m in models[1:]],
           "shared_experts": [{"source_model": str(models[0])}]}
    (tmp_path / "moe.yml").write_text(json.dumps(cfg))
    one_line_error(run("moe", tmp_path / "moe.yml", "--out", tmp_path / "out"),
                   "Glm4vMoeForConditionalGeneration", "post_mlp_layernorm", "glm4v")
    assert not (tmp_path / "out").exists()
    assert "model.language_model.layers.0.post_mlp_layernorm.weight" in load_file(models[0] / "model.safetensors")


def test_qwen3_5_moe_hidden_gates_are_the_base_vlms_hidden_states(qwen35, tmp_path):
    """Hidden gates through a VLM with no family row: each router row is the base VLM's hidden state of the prompt's
    last token at that layer's input (transformers run here in bfloat16, bos + prompt), normalised."""
    from tiny_tokenizer import make_tokenizer

    base = tmp_path / "base"
    shutil.copytree(qwen35 / "m0", base)
    make_tokenizer(base)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)  # as the folder's model type reads it
    prompts = ["a red square on a blue field", "is there a circle ?", "a red square ."]  # each its own last token
    out = moe({"base_model": str(base), "gate_mode": "hidden", "experts_per_token": 1,
               "experts": [{"source_model": str(qwen35 / f"m{i}"), "positive_prompts": [p]}
                           for i, p in zip((1, 2), prompts)],
               "shared_experts": [{"source_model": str(base), "positive_prompts": [prompts[2]]}]},
              tmp_path / "moe", quiet=True)
    got = load_file(out / "model.safetensors")
    model = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(base, dtype=torch.bfloat16).eval()
    for e, prompt in enumerate(prompts):
        ids = tokenizer(tokenizer.bos_token + prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in range(TEXT["num_hidden_layers"]):
            row = states[layer][0, -1]
            row = row / row.norm(p=2)  # in bfloat16, as mergekit-moe normalises
            if e < 2:
                gate = got[LAYER.format(layer) + "gate.weight"][e]
            else:
                gate = got[LAYER.format(layer) + "shared_expert_gate.weight"][0]
            torch.testing.assert_close(gate.float(), row.float(), rtol=0, atol=0)


def test_a_pair_transformers_ships_without_a_row_is_named_in_one_line(monkeypatch):
    """A new `T_moe` type in transformers is found at run time; until a row says its fields, the refusal names both."""
    from mmmerge.errors import UnsupportedArchitectureError
    from mmmerge.mixture import architectures
    from mmmerge.mixture.config import load_config

    monkeypatch.setattr(architectures, "moe_pairs", lambda: {**moe_pairs(), "gemma3": "gemma3_moe"})
    config = load_config({"base_model": "base", "gate_mode": "random",
                          "experts": [{"source_model": "a"}, {"source_model": "b"}]})
    with pytest.raises(UnsupportedArchitectureError, match="transformers pairs gemma3 with gemma3_moe"):
        architectures.choose(config, "gemma3")
    with pytest.raises(UnsupportedArchitectureError, match="llava is a vision-language family with no MoE counterpart"):
        architectures.choose(config, "llava")
    assert architectures.choose(config, "qwen3_vl").class_name == "Qwen3VLMoeForConditionalGeneration"
