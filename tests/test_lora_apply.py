"""Applying peft LoRA adapters while streaming, against peft's own `merge_and_unload` (the oracle).

Adapters are made by peft on tiny real architectures with random (non-zero) B factors, lora_alpha != r,
rank/alpha patterns, rsLoRA, fan_in_fan_out (GPT-2 Conv1D), embeddings, lora_bias and modules_to_save;
then every tensor mmmerge produces must equal peft's merged model within 1e-5 (float32).
"""

import contextlib
import io
import json
import os
import pickle
import shutil

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from mmmerge import merge
from mmmerge.adapters import open_checkpoint
from mmmerge.adapters.hf_multimodal import family_tensors
from mmmerge.cli import main
from mmmerge.errors import MMMergeError
from mmmerge.lora import open_with_lora, read_adapter
from tiny import clip_vision_config, llama_config, llava_config, max_diff, randomize

os.environ["HF_HUB_OFFLINE"] = "1"
TOL = 1e-5


def make_adapter(cls, base_dir, out, seed=1, **cfg):
    """A peft adapter on the model at `base_dir` with random A and B (init_lora_weights=False)."""
    torch.manual_seed(seed)
    model = cls.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **cfg))
    with torch.no_grad():  # lora_B.bias is zero-initialised; make it count
        for n, p in peft_model.named_parameters():
            if "lora_B" in n and n.endswith("bias"):
                p.normal_(0, 0.1)
    peft_model.save_pretrained(out)
    return out


def peft_merged(cls, base_dir, lora_dir) -> dict[str, torch.Tensor]:
    model = PeftModel.from_pretrained(cls.from_pretrained(base_dir), lora_dir)
    return {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}


def compare(ours: dict, theirs: dict, base: dict, expect_changed: list[str]):
    """Every tensor of ours equals peft's; `expect_changed` differ from `base` (the adapter did change them, in
    peft's result as in ours), so agreeing with peft is not agreeing on the base's own values."""
    assert ours, "nothing compared"
    for name, t in ours.items():
        assert name in theirs, name
        assert t.shape == theirs[name].shape, name
        assert max_diff(t, theirs[name]) <= TOL, (name, max_diff(t, theirs[name]))
    assert expect_changed, "name a tensor the adapter changes"
    for name in expect_changed:
        assert max_diff(theirs[name], base[name]) > 1e-3, f"{name}: the adapter left it as the base had it"


def loaded(tensors) -> dict:
    return {n: t.load() for n, t in tensors.items()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("lora")


@pytest.fixture(scope="module")
def llama(root):
    base = root / "llama"
    randomize(transformers.LlamaForCausalLM(llama_config()), seed=0).save_pretrained(base)
    (base / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return base


LLAMA_CASES = {
    "alpha_patterns": dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
                           rank_pattern={"v_proj": 2, "model.layers.1.mlp.down_proj": 6},
                           alpha_pattern={"layers.1.self_attn.q_proj": 3, "o_proj": 40}),
    "rslora": dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "up_proj"]),
    "embed_and_saved_head": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], modules_to_save=["lm_head"]),
}


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_causal_lm_matches_peft(root, llama, case):
    lora = make_adapter(transformers.LlamaForCausalLM, llama, root / f"llama_{case}", **LLAMA_CASES[case])
    if case == "embed_and_saved_head":
        with torch.no_grad():  # the saved lm_head must replace the base's: make it differ
            sd = load_file(lora / "adapter_model.safetensors")
            sd["base_model.model.lm_head.weight"] += 1.0
            save_file(sd, lora / "adapter_model.safetensors", metadata={"format": "pt"})
    ckpt = open_with_lora(llama, lora)
    ours = {n: t.load() for n, t in ckpt.component("language").tensors.items()}
    theirs = peft_merged(transformers.LlamaForCausalLM, llama, lora)
    base = loaded(open_checkpoint(llama).component("language").tensors)
    changed = [n for n in ours if max_diff(ours[n], base[n]) > 1e-3]
    compare(ours, theirs, base, changed)
    assert len(changed) >= 4
    adapter = read_adapter(lora)
    if case == "alpha_patterns":
        m = adapter.modules
        assert m["model.layers.0.self_attn.v_proj"].r == 2 and m["model.layers.1.mlp.down_proj"].r == 6
        assert m["model.layers.1.self_attn.q_proj"].scale == 3 / 4 and m["model.layers.0.self_attn.o_proj"].scale == 10
        assert m["model.layers.0.self_attn.q_proj"].scale == 4
    if case == "rslora":
        assert adapter.modules["model.layers.0.self_attn.q_proj"].scale == pytest.approx(4 / 8 ** 0.5)
    if case == "embed_and_saved_head":
        assert "model.embed_tokens.weight" in changed and "lm_head.weight" in changed


def test_gpt2_fan_in_fan_out_and_lora_bias(root):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    base = root / "gpt2"
    randomize(transformers.GPT2LMHeadModel(cfg), seed=3).save_pretrained(base)
    lora = make_adapter(transformers.GPT2LMHeadModel, base, root / "gpt2_lora", r=4, lora_alpha=12,
                        fan_in_fan_out=True, lora_bias=True, target_modules=["c_attn", "c_proj", "c_fc"])
    ckpt = open_with_lora(base, lora)
    ours = {n: t.load() for n, t in ckpt.component("language").tensors.items()}
    theirs = peft_merged(transformers.GPT2LMHeadModel, base, lora)
    plain = loaded(open_checkpoint(base).component("language").tensors)
    compare(ours, theirs, plain, ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.bias"])


def test_clip_vision_tower_matches_peft(root):
    base = root / "clip"
    randomize(transformers.CLIPVisionModel(clip_vision_config()), seed=4).save_pretrained(base)
    lora = make_adapter(transformers.CLIPVisionModel, base, root / "clip_lora", r=4, lora_alpha=8,
                        target_modules=["q_proj", "out_proj", "fc1"], rank_pattern={"fc1": 3})
    ckpt = open_with_lora(base, lora)
    ours = {n: t.load() for n, t in ckpt.component("vision").tensors.items()}
    theirs = peft_merged(transformers.CLIPVisionModel, base, lora)
    theirs = {k.removeprefix("vision_model."): v for k, v in theirs.items()}
    plain = loaded(open_checkpoint(base).component("vision").tensors)
    compare(ours, theirs, plain, ["encoder.layers.1.mlp.fc1.weight"])


@pytest.fixture(scope="module")
def llava(root):
    base = root / "llava"
    randomize(transformers.LlavaForConditionalGeneration(llava_config()), seed=5).save_pretrained(base)
    return base


def llava_state(ckpt) -> dict:
    return {n: t.load() for n, t in family_tensors(ckpt.family, ckpt.components, "memory").items()}


@pytest.mark.parametrize("legacy_names", [False, True])
def test_llava_language_adapter_matches_peft(root, llava, legacy_names):
    lora = make_adapter(transformers.LlavaForConditionalGeneration, llava, root / f"llava_lora_{legacy_names}", r=4,
                        lora_alpha=6, target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)|.*vision_tower.*fc2")
    theirs = peft_merged(transformers.LlavaForConditionalGeneration, llava, lora)
    if legacy_names:  # adapters trained with older transformers name the LLaVA modules the legacy way
        f = lora / "adapter_model.safetensors"
        sd = load_file(f)
        sd = {k.replace("model.language_model.", "language_model.model.")
               .replace("model.vision_tower.", "vision_tower.vision_model."): v for k, v in sd.items()}
        assert any("language_model.model.layers" in k for k in sd)
        save_file(sd, f, metadata={"format": "pt"})
    ours = llava_state(open_with_lora(llava, lora))
    plain = llava_state(open_checkpoint(llava))
    changed = [n for n in ours if max_diff(ours[n], plain[n]) > 1e-3]
    compare(ours, theirs, plain, changed)
    assert "model.language_model.layers.1.mlp.down_proj.weight" in changed
    assert "model.vision_tower.encoder.layers.0.mlp.fc2.weight" in changed
    assert len(changed) == 2 * 3 + 2


def test_recipe_base_plus_lora_passthrough_and_linear(root, llama, tmp_path):
    lora = make_adapter(transformers.LlamaForCausalLM, llama, root / "llama_recipe", seed=7, r=4, lora_alpha=8,
                        target_modules=["q_proj", "down_proj"])
    theirs = peft_merged(transformers.LlamaForCausalLM, llama, lora)
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: passthrough\nmodels:\n  - model: {llama}+{lora}\ndtype: float32\n")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["merge", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    ours = load_file(tmp_path / "out" / "model.safetensors")
    compare(ours, theirs, load_file(llama / "model.safetensors"), ["model.layers.0.self_attn.q_proj.weight"])
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    # mergekit's dict form, in a linear merge of the adapted model with its base: the mean of the two.
    cfg = {"merge_method": "linear", "dtype": "float32",
           "models": [{"model": {"model": {"path": str(llama)}, "lora": {"path": str(lora)}}, "parameters": {"weight": 1.0}},
                      {"model": str(llama), "parameters": {"weight": 1.0}}]}
    merge(cfg, tmp_path / "lin", quiet=True)
    lin = load_file(tmp_path / "lin" / "model.safetensors")
    plain = load_file(llama / "model.safetensors")
    for n, t in lin.items():
        assert max_diff(t, (theirs[n] + plain[n]) / 2) <= TOL, n


def test_output_over_the_adapter_or_its_base_is_refused(root, llama, tmp_path):
    lora = make_adapter(transformers.LlamaForCausalLM, llama, root / "llama_out_check", seed=3, r=2,
                        target_modules=["q_proj"])
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: passthrough\nmodels:\n  - model: {llama}+{lora}\n")
    for target in (lora, llama):  # --force must not replace the adapter or the base it is applied to
        with pytest.raises(MMMergeError, match="would replace the input"):
            merge(str(recipe), target, quiet=True, force=True)
    assert (lora / "adapter_config.json").is_file() and (llama / "config.json").is_file()


def run_cli(args):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


def bad_merge(tmp_path, ref):
    recipe = tmp_path / "bad.yml"
    recipe.write_text(f"merge_method: passthrough\nmodels:\n  - model: {ref}\n")
    out = tmp_path / "bad_out"
    code, err = run_cli(["merge", str(recipe), "--out", str(out), "--quiet"])
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bad_out")]
    return err


def test_bad_adapters(root, llama, tmp_path):
    lora = make_adapter(transformers.LlamaForCausalLM, llama, root / "llama_bad_src", r=4, target_modules=["q_proj"])
    # a base of another architecture: the target modules are not there
    clip = root / "clip_for_bad"
    transformers.CLIPVisionModel(clip_vision_config()).save_pretrained(clip)
    err = bad_merge(tmp_path, f"{clip}+{lora}")
    assert "model.layers.0.self_attn.q_proj" in err and "adapter_model.safetensors" in err
    # a base with fewer layers: one target module is missing
    short = root / "llama_short"
    transformers.LlamaForCausalLM(llama_config(num_hidden_layers=1)).save_pretrained(short)
    err = bad_merge(tmp_path, f"{short}+{lora}")
    assert "model.layers.1.self_attn.q_proj" in err
    # a base of the same family but another width: shapes do not fit
    wide = root / "llama_wide"
    transformers.LlamaForCausalLM(llama_config(hidden_size=48, num_attention_heads=4)).save_pretrained(wide)
    err = bad_merge(tmp_path, f"{wide}+{lora}")
    assert "shape" in err and "q_proj" in err
    # factors whose rank disagrees with adapter_config.json
    broken = tmp_path / "broken"
    shutil.copytree(lora, broken)
    sd = load_file(broken / "adapter_model.safetensors")
    sd["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(3, 32)
    save_file(sd, broken / "adapter_model.safetensors")
    err = bad_merge(tmp_path, f"{llama}+{broken}")
    assert "model.layers.0.self_attn.q_proj" in err and "r=4" in err
    # a pickle that would build arbitrary objects is never unpickled
    unsafe = tmp_path / "unsafe"
    shutil.copytree(lora, unsafe)
    (unsafe / "adapter_model.safetensors").unlink()
    with open(unsafe / "adapter_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    err = bad_merge(tmp_path, f"{llama}+{unsafe}")
    assert "adapter_model.bin" in err and "unpickle" in err
    assert not (tmp_path / "pwned").exists()
    # hand-edited configs: fields of the wrong type (integers as target modules, text as lora_alpha)
    for field, value in (("target_modules", [1, 2]), ("target_modules", 7), ("lora_alpha", "16"),
                         ("rank_pattern", {"q_proj": "2"})):
        edited = tmp_path / "edited"
        shutil.rmtree(edited, ignore_errors=True)
        shutil.copytree(lora, edited)
        config = json.loads((edited / "adapter_config.json").read_text())
        (edited / "adapter_config.json").write_text(json.dumps({**config, field: value}))
        err = bad_merge(tmp_path, f"{llama}+{edited}")
        assert "adapter_config.json" in err and f"`{field}` must" in err, err
    # not an adapter folder at all
    err = bad_merge(tmp_path, f"{llama}+{clip}")
    assert "adapter_config.json" in err


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_bin_adapter_is_read_safely(root, llama, tmp_path):
    lora = root / "llama_bad_src"
    if not lora.exists():
        make_adapter(transformers.LlamaForCausalLM, llama, lora, r=4, target_modules=["q_proj"])
    as_bin = tmp_path / "as_bin"
    shutil.copytree(lora, as_bin)
    torch.save(load_file(as_bin / "adapter_model.safetensors"), as_bin / "adapter_model.bin")
    (as_bin / "adapter_model.safetensors").unlink()
    ours = {n: t.load() for n, t in open_with_lora(llama, as_bin).component("language").tensors.items()}
    compare(ours, peft_merged(transformers.LlamaForCausalLM, llama, lora), load_file(llama / "model.safetensors"),
            ["model.layers.0.self_attn.q_proj.weight"])


def test_unknown_lora_variant_is_refused(root, llama, tmp_path):
    lora = make_adapter(transformers.LlamaForCausalLM, llama, tmp_path / "dora", r=4, target_modules=["q_proj"],
                        use_dora=True)
    with pytest.raises(MMMergeError, match="DoRA"):
        read_adapter(lora)
