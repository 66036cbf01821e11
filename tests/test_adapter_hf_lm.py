"""transformers causal LMs: read, write as transformers, and the source model's own forward as the oracle."""

import pytest
import torch
import transformers
from safetensors.torch import load_file

from mmmerge.adapters import detect_adapter, hf_causal_lm, open_checkpoint
from mmmerge.adapters.hf_export import save_hf
from mmmerge.errors import MMMergeError
from mmmerge.io import read_tensors
from tiny import LM, max_diff, randomize

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {"tie_word_embeddings": True}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 8}),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {"head_dim": 8}),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {"pad_token_id": 0}),
}


def build(family, tmp_path, **save_kw):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    model = randomize(model_cls(cfg_cls(**{**LM, **extra})))
    src = tmp_path / family
    model.save_pretrained(src, **save_kw)
    (src / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return model, src


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_language_model_reads_writes_and_runs_the_same(family, tmp_path):
    model, src = build(family, tmp_path)
    assert detect_adapter(src) is hf_causal_lm
    ckpt = open_checkpoint(src)
    lang = ckpt.component("language")
    assert lang.arch == type(model).__name__ and not ckpt.outside
    assert lang.num_params == sum(p.numel() for p in model.parameters())

    out = tmp_path / "out"
    assert save_hf(lang, out) == []
    loaded, info = type(model).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(0, LM["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_diff(loaded(ids).logits, model(ids).logits) <= 1e-5

    back = tmp_path / "back"
    hf_causal_lm.write_source(ckpt, back)
    original, again = load_file(src / "model.safetensors"), load_file(back / "model.safetensors")
    assert set(original) == set(again) and all(torch.equal(original[k], again[k]) for k in original)
    assert (back / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'


def test_tied_embeddings(tmp_path):
    model, src = build("qwen2", tmp_path)
    lang = open_checkpoint(src).component("language")
    assert hf_causal_lm.is_tied(lang) and "lm_head.weight" not in lang.tensors
    untied = hf_causal_lm.untie(lang)
    assert torch.equal(untied.tensors["lm_head.weight"].load(), model.lm_head.weight)
    save_hf(untied, tmp_path / "untied")
    loaded, info = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "untied", output_loading_info=True)
    assert not info["missing_keys"] and not loaded.config.tie_word_embeddings
    assert loaded.lm_head.weight.data_ptr() != loaded.model.embed_tokens.weight.data_ptr()


def test_sharded_folder(tmp_path):
    model, src = build("llama", tmp_path, max_shard_size="20KB")
    assert (src / "model.safetensors.index.json").exists()
    lang = open_checkpoint(src).component("language")
    for name, p in model.state_dict().items():
        assert torch.equal(lang.tensors[name].load(), p), name


def test_pytorch_bin_folder(tmp_path):
    model, src = build("llama", tmp_path)
    (src / "model.safetensors").unlink()
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    lang = open_checkpoint(src).component("language")
    assert torch.equal(lang.tensors["model.norm.weight"].load(), model.model.norm.weight)


def test_shape_disagreeing_with_config_names_the_tensor(tmp_path):
    _, src = build("llama", tmp_path)
    import json
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MMMergeError, match=r"tensor model\.layers\.0\.mlp\.\w+_proj\.weight has shape \((32, 64|64, 32)\)"):
        open_checkpoint(src)


def test_extra_tensors_are_kept_and_reported(tmp_path):
    from safetensors.torch import save_file
    _, src = build("llama", tmp_path)
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    ckpt = open_checkpoint(src)
    assert list(ckpt.outside) == ["model.layers.0.self_attn.rotary_emb.inv_freq"] and "model" in ckpt.outside_reasons
    hf_causal_lm.write_source(ckpt, tmp_path / "back")
    assert set(read_tensors(tmp_path / "back")) == set(tensors)


MOE = {  # transformers 5 saves these one tensor per expert and holds them fused; Mixtral renames its MLP too
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                  {"head_dim": 8, "num_experts": 3, "num_experts_per_tok": 2, "moe_intermediate_size": 16}),
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                {"num_local_experts": 3, "num_experts_per_tok": 2, "sliding_window": None}),
}


@pytest.mark.parametrize("family", sorted(MOE))
def test_experts_saved_one_per_tensor_are_read_fused_as_transformers_loads_them(family, tmp_path):
    from mmmerge import merge

    cfg_cls, model_cls, extra = MOE[family]
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = randomize(model_cls(cfg_cls(**{**LM, **extra})), seed=seed)
        model.save_pretrained(tmp_path / f"m{seed}")
        folders.append(tmp_path / f"m{seed}")
    on_disk = load_file(folders[0] / "model.safetensors")
    assert any(".experts.0." in k for k in on_disk) and not any(k.endswith("experts.gate_up_proj") for k in on_disk)

    states = [model_cls.from_pretrained(f).state_dict() for f in folders]
    lang = open_checkpoint(folders[0]).component("language")
    tied = {"lm_head.weight"} if lang.config.get("tie_word_embeddings") else set()
    assert set(lang.tensors) == set(states[0]) - tied
    for name, t in lang.tensors.items():
        assert t.shape == tuple(states[0][name].shape) and torch.equal(t.load(), states[0][name]), name

    merge({"merge_method": "linear", "dtype": "float32",
           "models": [{"model": str(f), "parameters": {"weight": w}} for f, w in zip(folders, (0.3, 0.7))]},
          tmp_path / "merged", quiet=True)
    loaded, info = model_cls.from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, t in loaded.state_dict().items():
        torch.testing.assert_close(t, 0.3 * states[0][name] + 0.7 * states[1][name], rtol=0, atol=1e-6, msg=name)

    assert save_hf(lang, tmp_path / "converted") == []  # `mmmerge convert` writes it as the class holds it
    again = model_cls.from_pretrained(tmp_path / "converted").state_dict()
    assert all(torch.equal(again[k], v) for k, v in states[0].items())


def test_a_lora_of_per_expert_modules_applies_before_the_experts_are_fused(tmp_path):
    """A transformers 4 era Mixtral LoRA targets one expert's `w1`: `mmmerge merge` of `base+lora` adds
    (alpha / r) B A to that expert's file tensor, which the output holds inside the fused `gate_up_proj`."""
    import json

    from safetensors.torch import save_file

    from mmmerge import merge

    cfg_cls, model_cls, extra = MOE["mixtral"]
    torch.manual_seed(0)
    randomize(model_cls(cfg_cls(**{**LM, **extra}))).save_pretrained(tmp_path / "base")
    w1 = "model.layers.1.block_sparse_moe.experts.2.w1"
    assert w1 + ".weight" in load_file(tmp_path / "base" / "model.safetensors")
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(2, LM["hidden_size"], generator=g), torch.randn(LM["intermediate_size"], 2, generator=g)
    (tmp_path / "lora").mkdir()
    save_file({f"base_model.model.{w1}.lora_A.weight": A, f"base_model.model.{w1}.lora_B.weight": B},
              tmp_path / "lora" / "adapter_model.safetensors")
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["w1"], "fan_in_fan_out": False}))
    merge({"merge_method": "passthrough", "dtype": "float32",
           "models": [{"model": f"{tmp_path / 'base'}+{tmp_path / 'lora'}"}]}, tmp_path / "out", quiet=True)
    base = model_cls.from_pretrained(tmp_path / "base").state_dict()
    got, info = model_cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    got = got.state_dict()
    fused = "model.layers.1.mlp.experts.gate_up_proj"
    expected = base[fused].clone()
    expected[2, :LM["intermediate_size"]] += 2.0 * B @ A  # w1 is the gate, the first half of [gate; up]
    torch.testing.assert_close(got[fused], expected, rtol=0, atol=1e-5)
    assert all(torch.equal(got[k], v) for k, v in base.items() if k != fused)
