"""The merge engine against mergekit 0.1.5 (the oracle) and the transformers loader.

The same config goes through mergekit's Python API and through `mmmerge.merge`; every output tensor must
agree within 1e-5. Configs use gradients, filters, global and per-model parameters, a base model inside
and outside the model list, so parameter resolution and layer positions are checked end to end.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

from mmmerge import merge
from mmmerge.engine import evaluate_setting, load_recipe, plan_merge
from mmmerge.engine.parameters import layer_position
from mmmerge.errors import MMMergeError, RecipeError
from cli_run import one_line_error, run
from tiny import llama_config, llava_config, randomize

os.environ["HF_HUB_OFFLINE"] = "1"


def finetune(model, seed):
    """A fine-tune of `model`: small, different changes to every parameter."""
    return randomize(model, seed)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = {}
    base = randomize(transformers.LlamaForCausalLM(llama_config()), seed=0)
    base.save_pretrained(root / "base")
    (root / "base" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    paths["base"] = root / "base"
    for i in (1, 2):
        m = transformers.LlamaForCausalLM.from_pretrained(root / "base")
        finetune(m, seed=i).save_pretrained(root / f"ft{i}")
        paths[f"ft{i}"] = root / f"ft{i}"
    randomize(transformers.LlamaForCausalLM(llama_config(vocab_size=130)), 3).save_pretrained(root / "vocab130")
    randomize(transformers.LlamaForCausalLM(llama_config(num_hidden_layers=3)), 4).save_pretrained(root / "deep")
    paths["vocab130"], paths["deep"] = root / "vocab130", root / "deep"
    # Qwen2: one input ties lm_head to the embeddings, the other stores its own.
    for name, tie, seed in (("qwen_tied", True, 5), ("qwen_untied", False, 6)):
        cfg = transformers.Qwen2Config(**{**llama_config().to_dict(), "model_type": "qwen2", "tie_word_embeddings": tie})
        randomize(transformers.Qwen2ForCausalLM(cfg), seed).save_pretrained(root / name)
        paths[name] = root / name
    return {k: str(v) for k, v in paths.items()}


def mergekit_merge(cfg, out):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(cfg), str(out),
              options=MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    return load_file(out / "model.safetensors")


def assert_same(expected: dict, got: dict, tol=1e-5):
    assert set(expected) == set(got)
    for k in expected:
        assert got[k].dtype == expected[k].dtype, k
        assert (got[k].float() - expected[k].float()).abs().max().item() <= tol, k


def cases(p):
    B, A1, A2 = p["base"], p["ft1"], p["ft2"]
    return {
        "linear": {"merge_method": "linear", "models": [
            {"model": A1, "parameters": {"weight": [1, 2, 0.5]}},
            {"model": A2, "parameters": {"weight": [{"filter": "mlp", "value": 0.2}, {"value": [0.3, 1]}]}}]},
        "linear_base_not_listed": {"merge_method": "linear", "base_model": B, "parameters": {"weight": 0.7, "normalize": False},
                                   "models": [{"model": A1, "parameters": {"weight": 0.2}}, {"model": A2, "parameters": {"weight": 0.1}}]},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": B, "parameters": {"lambda": 0.8, "weight": 0.4},
                            "models": [{"model": A1, "parameters": {"weight": 0.6}},
                                       {"model": A2, "parameters": {"weight": [{"filter": "self_attn", "value": [0.1, 0.9]}]}}]},
        "ties": {"merge_method": "ties", "base_model": B, "dtype": "float32", "parameters": {"normalize": True, "density": 0.9},
                 "models": [{"model": B},
                            {"model": A1, "parameters": {"weight": [0.2, 0.8], "density": [{"filter": "self_attn", "value": 0.5}, {"value": 0.7}]}},
                            {"model": A2, "parameters": {"weight": 0.5}}]},
        "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "base_model": B, "models": [
            {"model": A1, "parameters": {"weight": 0.6, "density": 0.8, "gamma": 0.05}},
            {"model": A2, "parameters": {"weight": 0.4, "density": [0.6, 0.9]}}]},
        "slerp": {"merge_method": "slerp", "base_model": B, "models": [{"model": B}, {"model": A1}],
                  "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                       {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]}},
        "nuslerp": {"merge_method": "nuslerp", "base_model": B, "models": [
            {"model": A1, "parameters": {"weight": 0.3}}, {"model": A2, "parameters": {"weight": 0.7}}]},
        "karcher": {"merge_method": "karcher", "models": [{"model": A1}, {"model": A2}, {"model": B}]},
        "model_stock": {"merge_method": "model_stock", "base_model": B, "models": [{"model": A1}, {"model": A2}]},
        "sce": {"merge_method": "sce", "base_model": B, "models": [{"model": A1}, {"model": A2}], "parameters": {"select_topk": 0.5}},
        "passthrough": {"merge_method": "passthrough", "models": [{"model": A1, "parameters": {"scale": [0.5, 2]}}]},
    }


CASES = ["linear", "linear_base_not_listed", "task_arithmetic", "ties", "breadcrumbs_ties", "slerp", "nuslerp",
         "karcher", "model_stock", "sce", "passthrough"]


@pytest.mark.parametrize("name", CASES)
def test_matches_mergekit(models, tmp_path, name):
    cfg = cases(models)[name]
    expected = mergekit_merge(cfg, tmp_path / "mergekit")
    out = merge(cfg, tmp_path / "mmmerge", quiet=True)
    assert_same(expected, load_file(out / "model.safetensors"))


def test_output_is_a_complete_transformers_model(models, tmp_path):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(yaml.safe_dump(cases(models)["ties"], sort_keys=False))
    out = merge(str(recipe), tmp_path / "out", quiet=True)
    model, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'  # side files of the base
    assert (out / "generation_config.json").is_file()
    written = (out / "mmmerge_recipe.yml").read_text()
    assert written.startswith("# written by mmmerge 0.1.0") and yaml.safe_load(written) == cases(models)["ties"]
    with open(out / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"]["mmmerge_version"] == "0.1.0"
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "recipe.yml"]  # no temporary folders left


def test_evaluate_setting_equals_mergekit():
    from mergekit.config import ConditionalParameter, evaluate_setting as mk_evaluate
    from pydantic import TypeAdapter

    from mmmerge.engine.recipe import Condition

    settings = [0.5, "0.25", [0, 1], [0.2, 0.9, 0.4], [1, 2, 3, 4, 5], [True, False], [True, False, True],
                [{"filter": "mlp", "value": [0.1, 0.3]}, {"value": 0.7}], [{"filter": "attn", "value": 1}],
                {"filter": "*", "value": [2, 4]}]
    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"]
    for s in settings:
        for t in (0, 0.2, 1 / 3, 0.5, 0.75, 1):
            for name in names:
                kind = bool if (isinstance(s, list) and s and isinstance(s[0], bool)) else float
                mine_s = load_condition(s, Condition)
                theirs_s = load_condition(s, ConditionalParameter)
                v = TypeAdapter(kind).validate_python
                assert evaluate_setting(name, mine_s, t, v) == mk_evaluate(name, theirs_s, t, validate=v), (s, t, name)


def load_condition(s, cls):
    if isinstance(s, dict):
        return cls(**s)
    if isinstance(s, list) and s and isinstance(s[0], dict):
        return [cls(**c) for c in s]
    return s


def test_layer_position_is_mergekits_t():
    assert layer_position("model.embed_tokens.weight", 4) == 0 and layer_position("lm_head.weight", 4) == 0
    assert layer_position("model.layers.0.mlp.up_proj.weight", 4) == 0
    assert layer_position("model.layers.2.mlp.up_proj.weight", 5) == 0.5
    assert layer_position("model.layers.3.self_attn.q_proj.weight", 4) == 1
    assert layer_position("model.layers.0.self_attn.q_proj.weight", 1) == 1


def test_tied_and_untied_inputs_are_untied(models, tmp_path):
    cfg = {"merge_method": "linear", "base_model": models["qwen_tied"],
           "models": [{"model": models["qwen_tied"], "parameters": {"weight": 0.3}},
                      {"model": models["qwen_untied"], "parameters": {"weight": 0.7}}]}
    expected = mergekit_merge(cfg, tmp_path / "mergekit")
    assert "lm_head.weight" in expected
    out = merge(cfg, tmp_path / "mmmerge", quiet=True)
    assert_same(expected, load_file(out / "model.safetensors"))
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    model, info = transformers.Qwen2ForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(model.lm_head.weight, load_file(out / "model.safetensors")["lm_head.weight"])


def test_out_dtype_and_config(models, tmp_path):
    cfg = {**cases(models)["task_arithmetic"], "out_dtype": "bfloat16"}
    out = merge(cfg, tmp_path / "out", quiet=True)
    tensors = load_file(out / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    expected = mergekit_merge(cfg, tmp_path / "mergekit")
    assert_same(expected, tensors, tol=1e-2)  # bf16 rounding of the same float32 result


def test_random_methods_are_reproducible_with_a_seed(models, tmp_path):
    cfg = {"merge_method": "dare_ties", "base_model": models["base"],
           "models": [{"model": models["ft1"], "parameters": {"weight": 1, "density": 0.5}},
                      {"model": models["ft2"], "parameters": {"weight": 1, "density": 0.5}}]}
    a = load_file(merge(cfg, tmp_path / "a", seed=1, quiet=True) / "model.safetensors")
    b = load_file(merge(cfg, tmp_path / "b", seed=1, quiet=True) / "model.safetensors")
    c = load_file(merge(cfg, tmp_path / "c", seed=2, quiet=True) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("proj.weight"))


def test_llava_language_merged_with_a_text_llm(tmp_path):
    """Multimodal recipe: vision and projector copied, language merged with a fine-tuned LLM."""
    from mmmerge.adapters import open_checkpoint
    from mmmerge.adapters.hf_export import save_hf

    llava = randomize(transformers.LlavaForConditionalGeneration(llava_config()), seed=0)
    llava.save_pretrained(tmp_path / "llava")
    (tmp_path / "llava" / "tokenizer_config.json").write_text("{}")
    llm = randomize(transformers.LlamaForCausalLM(llama_config()), seed=7)
    llm.save_pretrained(tmp_path / "llm")
    recipe = {"components": {
        "vision": {"source": str(tmp_path / "llava")},
        "projector": {"source": str(tmp_path / "llava")},
        "language": {"merge_method": "ties", "base_model": str(tmp_path / "llava"),
                     "models": [{"model": str(tmp_path / "llm"), "parameters": {"weight": [0.3, 0.9], "density": 0.5}}]}},
        "output": {"format": "llava"}}
    out = merge(recipe, tmp_path / "out", quiet=True)
    merged, info = transformers.LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert (out / "tokenizer_config.json").is_file()
    # Oracle: mergekit on the LLaVA's language model written as a plain LLM folder.
    save_hf(open_checkpoint(tmp_path / "llava").component("language"), tmp_path / "llava_lm")
    section = {**recipe["components"]["language"], "base_model": str(tmp_path / "llava_lm")}
    expected = mergekit_merge(section, tmp_path / "mergekit")
    got = open_checkpoint(out).component("language").tensors
    assert_same(expected, {k: t.load() for k, t in got.items()})
    for a, b in ((merged.model.vision_tower, llava.model.vision_tower),
                 (merged.model.multi_modal_projector, llava.model.multi_modal_projector)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("base", ["llava", "llm"])
def test_llava_extra_vocabulary_rows_are_kept(tmp_path, base):
    """A LLaVA whose LLM grew rows for `<image>` and padding, merged with a text-only LLM of the same base:
    the shared rows are merged (mergekit on the cut tables is the oracle), the extra rows copied."""
    from mmmerge.adapters import open_checkpoint
    from mmmerge.adapters.hf_export import save_hf

    rows = llama_config().vocab_size
    llava = randomize(transformers.LlavaForConditionalGeneration(llava_config(text=llama_config(vocab_size=rows + 64))), 0)
    llava.save_pretrained(tmp_path / "llava")
    randomize(transformers.LlamaForCausalLM(llama_config()), seed=7).save_pretrained(tmp_path / "llm")
    # the oracle's input: the LLaVA's language model cut to the shared rows
    lang = open_checkpoint(tmp_path / "llava").component("language")
    cut = {n: t.derive(lambda x: x[:rows], (rows, *t.shape[1:])) if t.shape[0] == rows + 64 else t
           for n, t in lang.tensors.items()}
    save_hf(type(lang)(lang.name, lang.arch, {**lang.config, "vocab_size": rows}, cut), tmp_path / "llava_lm")

    names = {"llava": str(tmp_path / "llava"), "llm": str(tmp_path / "llm")}
    other = "llm" if base == "llava" else "llava"
    section = {"merge_method": "ties", "base_model": names[base],
               "models": [{"model": names[other], "parameters": {"weight": 0.7, "density": 0.6}}]}
    recipe = {"components": {"vision": {"source": names["llava"]}, "projector": {"source": names["llava"]},
                             "language": section}, "output": {"format": "llava"}}
    out = merge(recipe, tmp_path / "out", quiet=True)
    merged, info = transformers.LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert merged.config.text_config.vocab_size == rows + 64

    oracle_names = {**names, "llava": str(tmp_path / "llava_lm")}
    expected = mergekit_merge({**section, "base_model": oracle_names[base],
                               "models": [{**section["models"][0], "model": oracle_names[other]}]}, tmp_path / "mk")
    got = {k: t.load() for k, t in open_checkpoint(out).component("language").tensors.items()}
    for k, want in expected.items():
        if want.shape[0] == rows:
            assert torch.equal(got[k][rows:], lang.tensors[k].load()[rows:]), k
            got[k] = got[k][:rows]
    assert_same(expected, got)

    # the same LLMs with different vocabularies and no LLaVA among them stay an error
    randomize(transformers.LlamaForCausalLM(llama_config(vocab_size=rows + 64)), 8).save_pretrained(tmp_path / "big")
    with pytest.raises(MMMergeError, match="embed_tokens"):
        merge({**section, "base_model": names["llm"], "models": [{"model": str(tmp_path / "big")}]}, tmp_path / "o2",
              quiet=True)
    assert not (tmp_path / "o2").exists()


def test_two_llavas_merge_every_component(tmp_path):
    for i in range(2):
        randomize(transformers.LlavaForConditionalGeneration(llava_config()), seed=i).save_pretrained(tmp_path / f"l{i}")
    cfg = {"merge_method": "linear", "models": [{"model": str(tmp_path / "l0"), "parameters": {"weight": 0.25}},
                                                {"model": str(tmp_path / "l1"), "parameters": {"weight": 0.75}}]}
    out = merge(cfg, tmp_path / "out", quiet=True)
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    a, b, m = (load_file(p / "model.safetensors") for p in (tmp_path / "l0", tmp_path / "l1", out))
    assert set(m) == set(a)
    assert all(torch.allclose(m[k], 0.25 * a[k] + 0.75 * b[k], atol=1e-6) for k in a)


def test_non_finite_result_is_an_error_naming_the_tensor(models, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(models["ft1"], bad)
    tensors = load_file(bad / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    cfg = {"merge_method": "linear", "models": [{"model": models["ft2"], "parameters": {"weight": 1}},
                                                {"model": str(bad), "parameters": {"weight": 1}}]}
    with pytest.raises(MMMergeError, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight: .*non-finite"):
        merge(cfg, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    for method in ("ties", "task_arithmetic"):  # the slice-wise methods, written straight in the output dtype
        section = {**cfg, "merge_method": method, "base_model": models["base"], "out_dtype": "bfloat16"}
        with pytest.raises(MMMergeError, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight: .*non-finite"):
            merge(section, tmp_path / "out", quiet=True)
        assert not (tmp_path / "out").exists()


def test_values_beyond_the_output_dtype_are_an_error_naming_the_tensor(models, tmp_path):
    cfg = {"merge_method": "linear", "out_dtype": "float16", "parameters": {"normalize": False},
           "models": [{"model": models["ft1"], "parameters": {"weight": 1e6}}]}
    with pytest.raises(MMMergeError, match=r"tensor \S+: values overflow float16; use a wider out_dtype"):
        merge(cfg, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


# --- the command line -------------------------------------------------------------------------------

def write_recipe(tmp_path, cfg):
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_cli_merge_and_dry_run(models, tmp_path):
    recipe = write_recipe(tmp_path, cases(models)["task_arithmetic"])
    r = run("merge", recipe, "--out", tmp_path / "dry", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "language: merge task_arithmetic of 3 input(s) -> LlamaForCausalLM, 21 tensors" in r.stdout
    assert "dry run: nothing written" in r.stdout and not (tmp_path / "dry").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml"]
    r = run("merge", recipe, "--out", tmp_path / "out", "--quiet", "--threads", "1")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    r = run("merge", recipe, "--out", tmp_path / "out", "--quiet")
    assert r.returncode == 2 and "not empty" in r.stderr
    assert run("merge", recipe, "--out", tmp_path / "out", "--quiet", "--force").returncode == 0


def invalid_recipes(p):
    B, A1 = p["base"], p["ft1"]
    ta = lambda *models, **kw: {"merge_method": "ties", "base_model": B, "models": list(models), **kw}
    return {
        "shape": (ta({"model": A1, "parameters": {"weight": 1}}, {"model": p["vocab130"], "parameters": {"weight": 1}}),
                  ["tensor model.embed_tokens.weight has shape (130, 32) in", "vocab130 but (128, 32) in", "base;",
                   "2 wrongly shaped"]),
        "missing_file": (ta({"model": str(A1) + "_nope", "parameters": {"weight": 1}}), ["ft1_nope: no such file or folder"]),
        "density": (ta({"model": A1, "parameters": {"weight": 1, "density": 1.5}}), ["density", "1.5", "(0, 1]"]),
        "density_in_one_layer": (ta({"model": A1, "parameters": {"weight": 1, "density": [0.5, 1.5]}}),
                                 ["tensor model.layers.1.", "density", "1.5"]),
        "missing_tensor": (ta({"model": A1, "parameters": {"weight": 1}}, {"model": p["deep"], "parameters": {"weight": 1}}),
                           ["tensor model.layers.2.", "is in", "deep but not in", "unexpected"]),
        "missing_weight": (ta({"model": A1}), ["weight", "required"]),
        "unknown_method": ({"merge_method": "average", "models": [{"model": A1}]}, ["unknown merge method 'average'"]),
        "unknown_key": ({"merge_method": "linear", "modles": [{"model": A1}]},
                        ["give exactly one of `models` and `slices`", "modles: unknown key, did you mean `models`?"]),
        "base_required": ({"merge_method": "ties", "models": [{"model": A1, "parameters": {"weight": 1}}]}, ["needs a base_model"]),
        "misspelt_required_key": ({"merge_methd": "linear", "models": [{"model": A1, "parameters": {"weight": 1}}]},
                                  ["merge_method: required key is missing; `merge_methd` is not a key: did you mean "
                                   "`merge_method`?"]),
    }


@pytest.mark.parametrize("case", ["shape", "missing_file", "density", "density_in_one_layer", "missing_tensor",
                                  "missing_weight", "unknown_method", "unknown_key", "base_required",
                                  "misspelt_required_key"])
def test_cli_invalid_recipes_exit_2_and_write_nothing(models, tmp_path, case):
    cfg, fragments = invalid_recipes(models)[case]
    recipe = write_recipe(tmp_path, cfg)
    r = run("merge", recipe, "--out", tmp_path / "out")
    one_line_error(r, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml"]


def test_relative_paths_fall_back_to_the_recipe_folder(models, tmp_path):
    shutil.copytree(models["ft1"], tmp_path / "a")
    shutil.copytree(models["ft2"], tmp_path / "b")
    recipe = write_recipe(tmp_path, {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}},
                                                                          {"model": "b", "parameters": {"weight": 1}}]})
    plan = plan_merge(str(recipe))
    assert plan.components["language"].sources == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_recipe_forms():
    r = load_recipe("merge_method: linear\nmodels:\n  - model: {model: {path: /x}}\n    parameters: {weight: 1e-3}\n")
    assert r.merge.models[0].model == "/x" and r.merge.models[0].parameters["weight"] == "1e-3"
    with pytest.raises(RecipeError, match="output format llava needs all three components; missing: projector, language"):
        load_recipe({"components": {"vision": {"source": "/x"}}, "output": {"format": "llava"}})
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe("/nonexistent/recipe.yml")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu(models, tmp_path):
    cfg = cases(models)["ties"]
    a = load_file(merge(cfg, tmp_path / "cpu", quiet=True) / "model.safetensors")
    b = load_file(merge(cfg, tmp_path / "cuda", device="cuda", quiet=True) / "model.safetensors")
    assert_same(a, b)


def test_cuda_unavailable_is_one_line(models, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = write_recipe(tmp_path, cases(models)["linear"])
    one_line_error(run("merge", recipe, "--out", tmp_path / "out", "--device", "cuda"), "CUDA is not available")


def test_open_clip_towers_merge_into_a_transformers_vision_model(tmp_path):
    from open_clip_sources import VISION, make_folder  # open_clip costs seconds to import: only here

    from mmmerge.adapters import open_checkpoint

    for i in range(2):
        make_folder(tmp_path / f"oc{i}", VISION, quick_gelu=True, seed=i)
    cfg = {"merge_method": "linear", "models": [{"model": str(tmp_path / "oc0"), "parameters": {"weight": 1}},
                                                {"model": str(tmp_path / "oc1"), "parameters": {"weight": 3}}]}
    out = merge(cfg, tmp_path / "out", quiet=True)
    model, info = transformers.CLIPVisionModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert json.loads((out / "preprocessor_config.json").read_text())["crop_size"] == {"height": 32, "width": 32}
    assert not (out / "open_clip_config.json").exists()  # side files of a non-transformers source are not copied
    towers = [open_checkpoint(tmp_path / f"oc{i}").component("vision").tensors for i in range(2)]
    got = load_file(out / "model.safetensors")
    assert set(got) == set(towers[0]) - {"visual_projection.weight"}
    assert all(torch.allclose(got[k], (towers[0][k].load() + 3 * towers[1][k].load()) / 4, atol=1e-6) for k in got)


def test_open_clip_and_transformers_towers_merge_in_one_section(tmp_path):
    """Cross-library: an open_clip fine-tune merged onto a transformers CLIP base. open_clip's projection head,
    which the transformers tower lacks, is left out with a note instead of failing the merge."""
    from open_clip_sources import VISION, make_folder  # open_clip costs seconds to import: only here

    from mmmerge.adapters import open_checkpoint
    from mmmerge.adapters.hf_export import save_hf

    for i in range(2):
        make_folder(tmp_path / f"oc{i}", VISION, quick_gelu=True, seed=i)
    save_hf(open_checkpoint(tmp_path / "oc0").component("vision"), tmp_path / "hf_base")
    cfg = {"merge_method": "task_arithmetic", "base_model": str(tmp_path / "hf_base"),
           "models": [{"model": str(tmp_path / "oc1"), "parameters": {"weight": 0.5}}]}
    plan = plan_merge(cfg)
    assert any("visual_projection.weight" in n and "not merged" in n for n in plan.notes)
    out = merge(cfg, tmp_path / "out", quiet=True)
    _, info = transformers.CLIPVisionModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    base, ft = (open_checkpoint(tmp_path / p).component("vision").tensors for p in ("hf_base", "oc1"))
    got = load_file(out / "model.safetensors")
    assert set(got) == set(base)
    assert all(torch.allclose(got[k], base[k].load() + 0.5 * (ft[k].load() - base[k].load()), atol=1e-6) for k in got)


def test_language_only_output_from_a_llava(models, tmp_path):
    randomize(transformers.LlavaForConditionalGeneration(llava_config()), seed=0).save_pretrained(tmp_path / "llava")
    recipe = {"components": {"language": {"merge_method": "linear", "models": [
        {"model": str(tmp_path / "llava"), "parameters": {"weight": 1}}, {"model": models["ft1"], "parameters": {"weight": 1}}]}}}
    out = merge(recipe, tmp_path / "out", quiet=True)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    # the values: the mean of the LLaVA's language model (its own in-memory names) and the text-only LLM
    llava = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").state_dict()
    text = transformers.AutoModelForCausalLM.from_pretrained(models["ft1"]).state_dict()
    for name, merged in model.state_dict().items():
        own = llava[name.replace("model.", "model.language_model.", 1) if name.startswith("model.") else name]
        torch.testing.assert_close(merged, (own + text[name]) / 2, rtol=0, atol=1e-6, msg=name)


def test_output_over_an_input_is_refused(models, tmp_path):
    shutil.copytree(models["ft1"], tmp_path / "a")
    cfg = {"merge_method": "linear", "models": [{"model": str(tmp_path / "a"), "parameters": {"weight": 1}},
                                                {"model": models["ft2"], "parameters": {"weight": 1}}]}
    with pytest.raises(MMMergeError, match="would replace the input"):
        merge(cfg, tmp_path / "a", force=True, quiet=True)
    assert (tmp_path / "a" / "model.safetensors").is_file()


def lenient_recipes(p):
    """Keys and parameters mergekit 0.1.5 accepts and ignores, as published configs carry them."""
    B, A1, A2 = p["base"], p["ft1"], p["ft2"]
    return {
        "top_level_name": ({"name": "my-merge", "merge_method": "linear",
                            "models": [{"model": A1, "parameters": {"weight": 1}}]},
                           ["name: ignored"], []),
        "weight_on_model_stock": ({"merge_method": "model_stock", "base_model": B,
                                   "models": [{"model": A1, "parameters": {"weight": 1}}, {"model": A2}]},
                                  ["parameter `weight` is ignored: model_stock does not read it"], []),
        "normalize_on_sce": ({"merge_method": "sce", "base_model": B, "parameters": {"normalize": True},
                              "models": [{"model": A1}, {"model": A2}]},
                             ["parameter `normalize` is ignored: sce does not read it"], []),
        "shared_parameter_per_model": ({"merge_method": "ties", "base_model": B,
                                        "models": [{"model": A1, "parameters": {"weight": 1, "normalize": False}}]},
                                       ["parameter `normalize` is ignored: ties reads it for all models"], []),
        "misspelt_parameter": ({"merge_method": "ties", "base_model": B, "parameters": {"densty": 0.5},
                                "models": [{"model": A1, "parameters": {"weight": 1, "densty": 0.5}},
                                           {"model": A2, "parameters": {"weight": 1, "densty": 0.5}}]},
                               [], [f"parameters, models[{A1}], models[{A2}]: parameter `densty` is ignored: ties "
                                    "does not read it; did you mean `density`?"]),  # once, not once per place
        "misspelt_key": ({"merge_method": "linear", "dype": "float16",
                          "models": [{"model": A1, "parameters": {"weight": 1}}]},
                         [], ["dype: unknown key, ignored; did you mean `dtype`?"]),
        "misspelt_model_key": ({"merge_method": "linear", "parameters": {"weight": 1},
                                "models": [{"model": A1, "paramters": {"weight": 2}},
                                           {"model": A2, "paramters": {"weight": 3}}]},
                               [], ["models[0].paramters, models[1].paramters: unknown key, ignored; did you mean "
                                    "`parameters`?"]),
    }


@pytest.mark.parametrize("case", ["top_level_name", "weight_on_model_stock", "normalize_on_sce",
                                  "shared_parameter_per_model", "misspelt_parameter", "misspelt_key",
                                  "misspelt_model_key"])
def test_what_mergekit_ignores_is_noted_and_merged_as_mergekit_does(models, tmp_path, case):
    cfg, note_parts, warning_parts = lenient_recipes(models)[case]
    cfg = {**cfg, "dtype": cfg.get("dtype", "float32")} if "dype" not in cfg else cfg
    plan = plan_merge(cfg)
    for part in note_parts:
        assert any(part in n for n in plan.notes), (part, plan.notes)
    assert [w for w in plan.warnings if any(p in w for p in warning_parts)] == plan.warnings
    assert len(plan.warnings) == len(warning_parts)
    expected = mergekit_merge(cfg, tmp_path / "mergekit")  # mergekit accepts it too, and is the oracle
    got = load_file(merge(cfg, tmp_path / "mmmerge", quiet=True) / "model.safetensors")
    assert_same(expected, got)


def test_a_recipe_dict_holds_only_what_yaml_can(models, tmp_path):
    """Python values a YAML file cannot hold are refused naming their key (a YAML RepresenterError before); paths
    are taken as text."""
    cfg = {"merge_method": "linear", "dtype": "float32", "models": [{"model": models["ft1"], "parameters": {"weight": 1.0}}]}
    bad = {**cfg, "models": [{"model": models["ft1"], "parameters": {"weight": object()}}]}
    with pytest.raises(RecipeError, match=r"^recipe\.models\[0\]\.parameters\.weight: a value of type object cannot"):
        merge(bad, tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()
    as_path = {**cfg, "models": [{"model": Path(models["ft1"]), "parameters": {"weight": 1.0}}]}
    assert load_file(merge(as_path, tmp_path / "p", quiet=True) / "model.safetensors").keys() == \
        load_file(merge(cfg, tmp_path / "s", quiet=True) / "model.safetensors").keys()
