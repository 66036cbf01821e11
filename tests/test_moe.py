"""`mmmerge moe` against mergekit-moe 0.1.5 run in the test: every text output (Mixtral, Qwen2-MoE, Qwen3-MoE) and
gate mode on tiny Llama / Qwen2 / Qwen3 fine-tunes of one base. Its output and mmmerge's hold the same tensors,
bit for bit, in the same dtype, with the same config; transformers loads the output with no missing or unexpected
key and runs it; hidden gates route each expert's prompts to it; bad configs stop before anything is written."""

import json
import os
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file

from cli_run import one_line_error, run
from mmmerge import moe
from tiny import LM, randomize
from tiny_tokenizer import make_tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"

FAMILIES = {"llama": (transformers.LlamaConfig, {}), "mistral": (transformers.MistralConfig, {"sliding_window": 16}),
            "llama_tied": (transformers.LlamaConfig, {"tie_word_embeddings": True}), "qwen2": (transformers.Qwen2Config, {}),
            "qwen3": (transformers.Qwen3Config, {"head_dim": 8})}
PROMPTS = [["a red square on a blue field", "two black lines cross near the corner"],
           ["the yellow triangle points up", "is there a circle ? yes no"],
           ["what color is the shape ? answer with one word"]]
NEGATIVE = ["describe the picture . it shows a small object"]


def build_model(folder, family, seed, **kw):
    """A tiny causal LM of `family` with its tokenizer, saved in bfloat16: a fine-tune of a common base (seed 0)."""
    config_cls, extra = FAMILIES[family]
    tok = make_tokenizer(folder)
    config = config_cls(**{**LM, **extra, "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                           "eos_token_id": tok.eos_token_id, **kw})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    randomize(model, seed)
    model.to(torch.bfloat16).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """For each family: base, three fine-tunes."""
    root = tmp_path_factory.mktemp("moe")
    return {family: [build_model(root / f"{family}{i}", family, seed=i) for i in range(4)] for family in FAMILIES}


def config_for(paths, mode, n=2, **kw):
    """A mergekit-moe config: base paths[0], experts paths[1..n] with prompts (negative ones on the second)."""
    experts = [{"source_model": paths[i + 1], "positive_prompts": PROMPTS[i]} for i in range(n)]
    experts[1]["negative_prompts"] = NEGATIVE
    return {"base_model": paths[0], "gate_mode": mode, "experts": experts, **kw}


def mergekit_moe(config, out, seed):
    """mergekit-moe 0.1.5's build in this process, seeded as its --random-seed seeds it (torch's global generator
    is restored afterwards)."""
    from mergekit.merge import MergeOptions
    from mergekit.moe.config import MoEMergeConfig
    from mergekit.scripts.moe import build

    with torch.random.fork_rng():
        options = MergeOptions(device="cpu", random_seed=seed)
        options.apply_global_options()
        build(MoEMergeConfig.model_validate(config), str(out), options)


def assert_same_output(ours, theirs):
    a, b = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    config_a, config_b = (json.loads((p / "config.json").read_text()) for p in (ours, theirs))
    assert config_a == config_b
    return a


def assert_loads_and_runs(folder, class_name):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == class_name
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**tok(["a red square"], return_tensors="pt")).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


CASES = [  # family, mode, config keys, output class
    ("llama", "hidden", {}, "MixtralForCausalLM"),
    ("llama", "cheap_embed", {"dtype": "float32"}, "MixtralForCausalLM"),
    ("llama", "random", {}, "MixtralForCausalLM"),
    ("llama", "uniform_random", {"experts_per_token": 1}, "MixtralForCausalLM"),
    ("llama", "hidden", {"shared_experts": "base+prompts"}, "Qwen2MoeForCausalLM"),
    ("llama", "random", {"shared_experts": "base", "architecture": "qwen"}, "Qwen2MoeForCausalLM"),
    ("llama_tied", "hidden", {}, "MixtralForCausalLM"),
    ("mistral", "hidden", {"experts": 3}, "MixtralForCausalLM"),
    ("mistral", "cheap_embed", {"shared_experts": "base+prompts"}, "Qwen2MoeForCausalLM"),
    ("qwen2", "cheap_embed", {"shared_experts": "base+prompts", "experts": 3}, "Qwen2MoeForCausalLM"),
    ("qwen2", "random", {"shared_experts": "base+prompts", "dtype": "float16"}, "Qwen2MoeForCausalLM"),
    ("qwen3", "hidden", {"experts": 3}, "Qwen3MoeForCausalLM"),
    ("qwen3", "uniform_random", {}, "Qwen3MoeForCausalLM"),
]


def case_config(paths, mode, keys):
    keys = dict(keys)
    config = config_for(paths, mode, n=keys.pop("experts", 2), **keys)
    shared = config.pop("shared_experts", None)
    if shared:
        entry = {"source_model": paths[0]}
        if shared.endswith("+prompts"):
            entry["positive_prompts"] = ["is there a circle ? yes no"]
        config["shared_experts"] = [entry]
    return config


@pytest.mark.parametrize("family,mode,keys,class_name", CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_output_equals_mergekit_moe(models, tmp_path, family, mode, keys, class_name):
    config = case_config(models[family], mode, keys)
    mergekit_moe(config, tmp_path / "theirs", seed=7)
    moe({**config, "random_seed": 7}, tmp_path / "ours", quiet=True)
    tensors = assert_same_output(tmp_path / "ours", tmp_path / "theirs")
    assert_loads_and_runs(tmp_path / "ours", class_name)
    # the experts' MLPs are their sources' (no test above can pass with every expert equal to the base)
    expert = load_file(os.path.join(config["experts"][1]["source_model"], "model.safetensors"))
    dtype = tensors["model.norm.weight"].dtype
    fused = "model.layers.1.mlp.experts.down_proj" in tensors
    down = tensors["model.layers.1.mlp.experts.down_proj"][1] if fused else \
        tensors["model.layers.1.mlp.experts.1.down_proj.weight"]
    assert torch.equal(down, expert["model.layers.1.mlp.down_proj.weight"].to(dtype))


@pytest.mark.parametrize("family,mode,keys", [("llama", "random", {}), ("llama", "hidden", {"shared_experts": "base+prompts"}),
                                              ("qwen3", "hidden", {})])
def test_noise_and_residual_scale_equal_mergekit_moe(models, tmp_path, family, mode, keys):
    config = case_config(models[family], mode, keys)
    config["experts"][0]["noise_scale"] = 0.01
    config["experts"][1].update(noise_scale=0.02, residual_scale=0.5)
    if "shared_experts" in config:
        config["shared_experts"][0]["noise_scale"] = 0.03
    mergekit_moe(config, tmp_path / "theirs", seed=11)
    moe(config, tmp_path / "ours", random_seed=11, quiet=True)
    assert_same_output(tmp_path / "ours", tmp_path / "theirs")


def test_a_shared_expert_of_its_own(models, tmp_path):
    """A shared expert that is neither the base nor an expert (mergekit-moe fails on it): its MLP is written."""
    paths = models["llama"]
    config = case_config(paths, "hidden", {})
    config["shared_experts"] = [{"source_model": paths[3], "positive_prompts": ["is there a circle ? yes no"]}]
    moe(config, tmp_path / "out", quiet=True)
    out = load_file(tmp_path / "out" / "model.safetensors")
    source = load_file(os.path.join(paths[3], "model.safetensors"))
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert torch.equal(out[f"model.layers.0.mlp.shared_expert.{name}.weight"],
                           source[f"model.layers.0.mlp.{name}.weight"])
    assert_loads_and_runs(tmp_path / "out", "Qwen2MoeForCausalLM")


def test_hidden_gates_route_each_experts_prompts_to_it(models, tmp_path):
    paths = models["llama"]
    config = {"base_model": paths[0], "gate_mode": "hidden", "experts_per_token": 1,
              "experts": [{"source_model": paths[i + 1], "positive_prompts": PROMPTS[i]} for i in range(3)]}
    moe(config, tmp_path / "out", quiet=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for expert, prompts in enumerate(PROMPTS):
        for prompt in prompts:
            ids = tok(tok.bos_token + prompt, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                logits = model(**ids, output_router_logits=True).router_logits
            assert [int(layer[-1].argmax()) for layer in logits] == [expert] * LM["num_hidden_layers"], prompt


def test_command_line_writes_what_the_api_writes(models, tmp_path):
    config = case_config(models["llama"], "random", {})
    (tmp_path / "moe.yml").write_text(json.dumps(config))
    r = run("moe", tmp_path / "moe.yml", "--out", tmp_path / "cli", "--random-seed", "5")
    assert r.returncode == 0, r.stderr
    moe(tmp_path / "moe.yml", tmp_path / "api", random_seed=5, quiet=True)
    assert (tmp_path / "cli" / "mergekit_moe_config.yml").read_text() == (tmp_path / "moe.yml").read_text()
    assert (tmp_path / "cli" / "tokenizer.json").is_file()
    assert_same_output(tmp_path / "cli", tmp_path / "api")


def refusal(models, tmp_path, change):
    config = case_config(models["llama"], "hidden", {})
    change(config)
    (tmp_path / "moe.yml").write_text(json.dumps(config))
    return run("moe", tmp_path / "moe.yml", "--out", tmp_path / "out")


@pytest.mark.parametrize("change,needles", [
    (lambda c, m: c["experts"][1].update(source_model=m["qwen2"][1]), ["experts[1]", "qwen2", "base's architecture"]),
    (lambda c, m: c["experts"][0].update(source_model=m["narrow"]), ["experts[0]", "mlp.gate_proj", "shape"]),
    (lambda c, m: c["experts"][1].pop("positive_prompts"), ["experts[1].positive_prompts", "hidden"]),
    (lambda c, m: c.update(architecture="gpt"), ["architecture", "'gpt'", "Mixtral"]),
    (lambda c, m: c.update(shared_experts=[{"source_model": m["llama"][0]}] * 2), ["no MoE output", "shared"]),
    (lambda c, m: c.update(experts_per_token=3), ["experts_per_token", "3"]),
    (lambda c, m: c.update(gate_mode="random", shared_experts=[{"source_model": m["llama"][0]}]), ["DeepSeek", "qwen"]),
    (lambda c, m: [e.update(source_model=m["llama"][1]) for e in c["experts"]], ["i_understand_this_is_not_useful"]),
    (lambda c, m: c.update(gate_mode="hiden"), ["gate_mode", "hiden"]),
    (lambda c, m: c.update(architecture="qwen3"), ["Qwen3 MoE takes qwen3"]),
    (lambda c, m: c.update(base_model=m["untokenized"]), ["base_model", "no tokenizer", "gate_mode hidden"]),
    (lambda c, m: [c.update(base_model=m["llava"][0]), c["experts"][0].update(source_model=m["llava"][1]),
                   c["experts"][1].update(source_model=m["llava"][2])], ["llava", "vision-language family with no MoE counterpart"]),
], ids=["architecture", "shape", "prompts", "unknown-output", "two-shared", "per-token", "deepseek", "all-same",
        "gate-mode", "qwen3-from-llama", "no-tokenizer", "vision-language"])
def test_refusals_are_one_line_before_anything_is_written(models, tmp_path_factory, tmp_path, change, needles):
    if "narrow" not in models:
        models["narrow"] = build_model(tmp_path_factory.mktemp("narrow") / "m", "llama", 1, intermediate_size=48)
        untokenized = tmp_path_factory.mktemp("untokenized") / "m"
        shutil.copytree(models["llama"][0], untokenized, ignore=shutil.ignore_patterns("tokenizer*"))
        models["untokenized"] = str(untokenized)
        from tiny_llava import build_tiny_llava

        models["llava"] = [str(build_tiny_llava(tmp_path_factory.mktemp(f"llava{i}"), seed=i)) for i in range(3)]
    r = refusal(models, tmp_path, lambda c: change(c, models))
    one_line_error(r, *needles)
    assert not (tmp_path / "out").exists()


def test_the_flag_allows_experts_that_are_all_the_same(models, tmp_path):
    config = case_config(models["llama"], "hidden", {})
    for e in config["experts"]:
        e["source_model"] = models["llama"][1]
    (tmp_path / "moe.yml").write_text(json.dumps(config))
    r = run("moe", tmp_path / "moe.yml", "--out", tmp_path / "out", "--i-understand-this-is-not-useful-without-training")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    shutil.rmtree(tmp_path / "out")


def test_moe_outputs_read_and_merge_tensor_by_tensor(models, tmp_path):
    """The fused layout (as transformers 5 saves Mixtral) is read by mmmerge and merged tensor by tensor: each
    tensor of a linear merge of two MoE outputs is mergekit's linear kernel on the two."""
    from mergekit_oracle import assert_linear_merge_is_mergekits
    from mmmerge import describe

    for seed in (1, 2):
        moe(case_config(models["llama"], "random", {}), tmp_path / f"moe{seed}", random_seed=seed, quiet=True)
    shown = describe(tmp_path / "moe1")  # what `mmmerge inspect` prints: the experts and how many route a token
    assert "MixtralForCausalLM" in shown and "num_local_experts=2, num_experts_per_tok=2" in shown
    a, b = assert_linear_merge_is_mergekits(tmp_path / "moe1", tmp_path / "moe2", tmp_path / "merged")
    assert not torch.equal(a["model.layers.0.mlp.gate.weight"], b["model.layers.0.mlp.gate.weight"])
    assert_loads_and_runs(tmp_path / "merged", "MixtralForCausalLM")


def test_keys_mergekit_moe_ignores_are_ignored_with_a_warning(models, tmp_path):
    from mmmerge.errors import MMMergeWarning, RecipeError

    config = {**case_config(models["llama"], "random", {}), "name": "my-moe"}
    with pytest.warns(MMMergeWarning, match=r"name: unknown key, ignored \(mergekit-moe ignores it too\)"):
        moe(config, tmp_path / "out", quiet=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    config = case_config(models["llama"], "hidden", {})
    config["experts"][0]["positive_prompt"] = config["experts"][0].pop("positive_prompts")
    with pytest.warns(MMMergeWarning, match=r"experts\[0\]\.positive_prompt: .*did you mean `positive_prompts`"), \
            pytest.raises(RecipeError, match=r"experts\[0\]\.positive_prompts"):
        moe(config, tmp_path / "typo", quiet=True)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("alike", [False, True])
def test_degenerate_gates_are_warned_about_as_mergekit_moe_warns(models, tmp_path, caplog, alike):
    import logging
    import warnings

    from mergekit.moe.router import warn_degenerate_gates

    config = case_config(models["llama"], "hidden", {"dtype": "float32"})  # gate rows written exactly
    if alike:
        config["experts"][1].update(positive_prompts=PROMPTS[0][::-1], negative_prompts=None)  # expert 0's, reordered
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moe(config, tmp_path / "out", quiet=True)
    ours = [w for w in caught if "nearly degenerate" in str(w.message)]
    rows = load_file(tmp_path / "out" / "model.safetensors")
    gates = torch.stack([rows[f"model.layers.{i}.mlp.gate.weight"] for i in range(LM["num_hidden_layers"])])
    with caplog.at_level(logging.WARNING):
        warn_degenerate_gates(gates)
    assert bool(ours) == ("degenerate" in caplog.text) == alike
