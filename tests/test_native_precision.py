"""A half-precision config reproduces mergekit's model bit for bit: the merge is computed in the config's `dtype`
(or the checkpoints' own, when it names none) as mergekit computes it; `compute_dtype: float32` asks for
mmmerge's float32 arithmetic instead."""

import contextlib
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file

from mmmerge import merge
from mergekit_oracle import magnitude_sorts_stable
from tiny import llama_config, randomize

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def bf16_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    base = randomize(transformers.LlamaForCausalLM(llama_config()), 0)
    base.to(torch.bfloat16).save_pretrained(root / "base")
    paths = {"base": str(root / "base")}
    for i in (1, 2):
        tuned = randomize(transformers.LlamaForCausalLM.from_pretrained(root / "base", dtype=torch.float32), i)
        tuned.to(torch.bfloat16).save_pretrained(root / f"ft{i}")
        paths[f"ft{i}"] = str(root / f"ft{i}")
    return paths


def mergekit_merge(cfg, out, seed=None, *, stable=False):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    with magnitude_sorts_stable() if stable else contextlib.nullcontext():
        run_merge(MergeConfiguration.model_validate(cfg), str(out),
                  options=MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False, random_seed=seed))
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize("method,dtype", [("ties", "bfloat16"), ("task_arithmetic", None), ("breadcrumbs_ties", "float16"),
                                          ("della_linear", "bfloat16")])
def test_half_precision_configs_are_mergekits_bit_for_bit(bf16_models, tmp_path, method, dtype):
    p = bf16_models
    cfg = {"merge_method": method, "base_model": p["base"],
           "models": [{"model": p["ft1"], "parameters": {"weight": 0.6, "density": 0.5}},
                      {"model": p["ft2"], "parameters": {"weight": 0.4, "density": 0.7}}],
           "parameters": {"gamma": 0.02, "epsilon": 0.1} if "crumbs" in method or "della" in method else {}}
    if dtype:
        cfg["dtype"] = dtype
    # the default takes equal magnitudes at a TIES/breadcrumbs cut in index order (mergekit with a stable sort);
    # `tie_break: sort` takes them as mergekit's own sort on this machine does
    theirs = mergekit_merge(cfg, tmp_path / "mergekit", seed=5, stable=True)
    ours = load_file(merge(cfg, tmp_path / "mmmerge", quiet=True, seed=5) / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k
    if "ties" in method or "crumbs" in method:
        theirs = mergekit_merge(cfg, tmp_path / "mergekit-sort", seed=5)
        sort = {**cfg, "parameters": {**cfg["parameters"], "tie_break": "sort"}}
        ours = load_file(merge(sort, tmp_path / "mmmerge-sort", quiet=True, seed=5) / "model.safetensors")
        for k in theirs:
            assert torch.equal(ours[k], theirs[k]), k
    wide = load_file(merge({**cfg, "compute_dtype": "float32"}, tmp_path / "wide", quiet=True) / "model.safetensors")
    assert any(not torch.equal(wide[k], theirs[k]) for k in theirs)  # float32 arithmetic rounds elsewhere


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_seeded_random_merge_is_mergekits(bf16_models, tmp_path, method, dtype):
    """mergekit seeds torch once and draws tensor after tensor in its task order: so does mmmerge by default;
    `random_stream: per_tensor` gives each tensor its own stream instead (then the models differ)."""
    p = bf16_models
    cfg = {"merge_method": method, "base_model": p["base"], "dtype": dtype, "parameters": {"epsilon": 0.05},
           "models": [{"model": p["ft1"], "parameters": {"weight": 0.6, "density": 0.5}},
                      {"model": p["ft2"], "parameters": {"weight": 0.4, "density": 0.3}}]}
    if method != "della":
        del cfg["parameters"]
    theirs = mergekit_merge(cfg, tmp_path / "mergekit", seed=123)
    ours = load_file(merge(cfg, tmp_path / "mmmerge", quiet=True, seed=123) / "model.safetensors")
    assert ours.keys() == theirs.keys()
    tol = 0 if dtype == "bfloat16" else 1e-6
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=tol, msg=k)
    other = load_file(merge({**cfg, "random_stream": "per_tensor"}, tmp_path / "per", quiet=True, seed=123)
                      / "model.safetensors")
    assert any(not torch.equal(other[k], theirs[k]) for k in theirs)
