"""`slices:` recipes (layer ranges, frankenmerges, depth up-scaling) against mergekit 0.1.5 and transformers."""

import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from mmmerge import merge
from mmmerge.errors import MMMergeError
from tiny import llama_config, randomize

os.environ["HF_HUB_OFFLINE"] = "1"
LAYERS = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three Llamas of 4 layers (base and two fine-tunes) and two Qwen2s (whose config lists `layer_types`)."""
    root = tmp_path_factory.mktemp("slices")
    paths = {}
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        randomize(transformers.LlamaForCausalLM(llama_config(num_hidden_layers=LAYERS)), seed).save_pretrained(root / name)
        paths[name] = str(root / name)
    for name, seed in (("qa", 3), ("qb", 4)):
        cfg = transformers.Qwen2Config(**{**llama_config(num_hidden_layers=LAYERS).to_dict(), "model_type": "qwen2",
                                          "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2})
        randomize(transformers.Qwen2ForCausalLM(cfg), seed).save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def mergekit_merge(cfg, out):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(cfg), str(out),
              options=MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    return load_file(out / "model.safetensors"), json.loads((out / "config.json").read_text())


def configs(p):
    A, B, base = p["a"], p["b"], p["base"]
    return {
        # the commonest config on the hub: slerp over one slice, filtered gradients
        "slerp_gradients": {
            "slices": [{"sources": [{"model": A, "layer_range": [0, LAYERS]}, {"model": B, "layer_range": [0, LAYERS]}]}],
            "merge_method": "slerp", "base_model": A,
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                 {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]},
            "dtype": "float32"},
        # a frankenmerge: more layers than the inputs, alternating models
        "passthrough_stack": {
            "slices": [{"sources": [{"model": A, "layer_range": [0, 3]}]},
                       {"sources": [{"model": B, "layer_range": [1, 4]}]},
                       {"sources": [{"model": A, "layer_range": [3, 4]}]}],
            "merge_method": "passthrough", "dtype": "float32"},
        # sources at different layer offsets, per-source and per-slice parameters, a base inside each slice
        "ties_offsets": {
            "slices": [{"sources": [{"model": base, "layer_range": [0, 2]},
                                    {"model": A, "layer_range": [2, 4], "parameters": {"weight": 0.7, "density": 0.6}},
                                    {"model": B, "layer_range": [0, 2], "parameters": {"weight": [0.2, 0.9]}}],
                        "parameters": {"density": 0.4}},
                       {"sources": [{"model": base, "layer_range": [2, 4]},
                                    {"model": A, "layer_range": [0, 2], "parameters": {"weight": 0.5}},
                                    {"model": B, "layer_range": [2, 4], "parameters": {"weight": 0.5}}]}],
            "merge_method": "ties", "base_model": base, "parameters": {"density": 0.5, "normalize": False},
            "dtype": "float32"},
        "linear_one_layer_slices": {
            "slices": [{"sources": [{"model": A, "layer_range": [i, i + 1], "parameters": {"weight": [1, 0.2]}},
                                    {"model": B, "layer_range": [LAYERS - 1 - i, LAYERS - i],
                                     "parameters": {"weight": 0.5}}]} for i in range(LAYERS)],
            "merge_method": "linear", "dtype": "float32"},
    }


@pytest.mark.parametrize("name", ["slerp_gradients", "passthrough_stack", "ties_offsets", "linear_one_layer_slices"])
def test_same_tensors_and_layer_count_as_mergekit(models, tmp_path, name):
    cfg = configs(models)[name]
    expected, expected_cfg = mergekit_merge(cfg, tmp_path / "mergekit")
    out = merge(cfg, tmp_path / "mmmerge", quiet=True)
    got = load_file(out / "model.safetensors")
    assert set(got) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=k)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == expected_cfg["num_hidden_layers"]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_depth_up_scaling_keeps_per_layer_config(models, tmp_path):
    """SOLAR-style: layers 0-2 then 1-3 of one model; `layer_types` (sliding vs full attention per layer)
    follows each output layer's source layer, and transformers loads the 6-layer model."""
    qa = models["qa"]
    cfg = {"slices": [{"sources": [{"model": qa, "layer_range": [0, 3]}]},
                      {"sources": [{"model": qa, "layer_range": [1, 4]}]}],
           "merge_method": "passthrough", "dtype": "float32"}
    out = merge(cfg, tmp_path / "dus", quiet=True)
    src = json.loads(Path(qa, "config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    assert config["layer_types"] == [src["layer_types"][i] for i in (0, 1, 2, 1, 2, 3)]
    assert len(set(src["layer_types"])) == 2  # the test means something: the source mixes both kinds
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    original = transformers.AutoModelForCausalLM.from_pretrained(qa)
    for out_layer, src_layer in enumerate((0, 1, 2, 1, 2, 3)):
        a = model.model.layers[out_layer].state_dict()
        b = original.model.layers[src_layer].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_slices_stop_before_anything_is_written(models, tmp_path):
    A, B = models["a"], models["b"]
    bad = {"slices": [{"sources": [{"model": A, "layer_range": [0, 3]}, {"model": B, "layer_range": [0, 2]}]}],
           "merge_method": "linear"}
    with pytest.raises(MMMergeError, match="as many layers each"):
        merge(bad, tmp_path / "o", quiet=True)
    past = {"slices": [{"sources": [{"model": A, "layer_range": [2, 6]}]}], "merge_method": "passthrough"}
    with pytest.raises(MMMergeError, match=r"layer_range \[2, 6\] of .* runs past its 4 layers"):
        merge(past, tmp_path / "o", quiet=True)
    no_base = {"slices": [{"sources": [{"model": A, "layer_range": [0, 4]}]}], "merge_method": "task_arithmetic",
               "base_model": B, "parameters": {"weight": 1.0}}
    with pytest.raises(MMMergeError, match="base model .* is not among the slice's sources"):
        merge(no_base, tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()
