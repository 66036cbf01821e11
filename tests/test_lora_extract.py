"""`extract-lora` against the oracles: peft must load the adapter with no missing or unexpected keys, and
the update it applies to each linear weight must equal torch.linalg.svd's rank-R truncation of
(model - base) (Eckart-Young), computed here independently in float64; at full rank, the model itself."""

import contextlib
import io
import json
import os
import warnings

import pytest
import torch
import transformers
from peft import PeftModel

from mmmerge.cli import main
from mmmerge.lora.extract import extract_lora
from tiny import llama_config, llava_config, max_diff, randomize

os.environ["HF_HUB_OFFLINE"] = "1"
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def truncation(delta: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def peft_load(cls, base_dir, lora_dir):
    """The base with the adapter merged by peft; fails on any missing/unexpected-key warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(cls.from_pretrained(base_dir), lora_dir)
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not bad, bad
    return {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}


def state(cls, path):
    return {k: v.detach() for k, v in cls.from_pretrained(path).state_dict().items()}


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    randomize(transformers.LlamaForCausalLM(llama_config()), seed=0).save_pretrained(root / "base")
    ft = transformers.LlamaForCausalLM.from_pretrained(root / "base")
    with torch.no_grad():  # a structured fine-tune: low-rank-ish plus noise, and a changed norm
        g = torch.Generator().manual_seed(1)
        for j, (n, p) in enumerate(ft.named_parameters()):
            if p.dim() == 2 and any(s in n for s in LINEARS):
                o, i, k = *p.shape, 1 + j % 5  # modules of different intrinsic rank
                p.add_(torch.randn(o, k, generator=g) @ torch.randn(k, i, generator=g) * 0.05
                       + torch.randn(o, i, generator=g) * 0.01)
        ft.model.norm.weight.add_(0.1)
    ft.save_pretrained(root / "ft")
    return root


@pytest.mark.parametrize("rank", [2, 64])
def test_llama_truncated_svd(llamas, tmp_path, rank):
    rows, missed = extract_lora(llamas / "base", llamas / "ft", tmp_path / "lora", rank=rank)
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == sorted(LINEARS) and cfg["lora_alpha"] == cfg["r"]
    assert missed == ["model.norm.weight"]
    merged = peft_load(transformers.LlamaForCausalLM, llamas / "base", tmp_path / "lora")
    base, ft = state(transformers.LlamaForCausalLM, llamas / "base"), state(transformers.LlamaForCausalLM, llamas / "ft")
    checked = 0
    for name in base:
        if name.endswith(".weight") and any(s in name for s in LINEARS):
            delta = ft[name] - base[name]
            k = min(rank, *delta.shape)
            assert max_diff(merged[name] - base[name], truncation(delta, k)) <= 1e-5, name
            if rank == 64:  # full rank: the fine-tune's own weights
                assert max_diff(merged[name], ft[name]) <= 1e-5, name
            else:  # and the truncation really is lossy here, so the check above can fail
                assert max_diff(merged[name], ft[name]) > 1e-3, name
            checked += 1
        else:
            assert torch.equal(merged[name], base[name]), name
    assert checked == 2 * len(LINEARS)
    assert all(r.rank == (2 if rank == 2 else min(r.shape)) for r in rows)
    assert all(0 <= r.rel_error < (1 if rank == 2 else 1e-5) for r in rows)


def test_energy_picks_rank_per_module(llamas, tmp_path):
    rows, _ = extract_lora(llamas / "base", llamas / "ft", tmp_path / "lora", energy=0.9, rank=16)
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    base, ft = state(transformers.LlamaForCausalLM, llamas / "base"), state(transformers.LlamaForCausalLM, llamas / "ft")
    ranks = {}
    for r in rows:
        delta = (ft[r.module + ".weight"] - base[r.module + ".weight"]).double()
        s2 = torch.linalg.svdvals(delta) ** 2
        k = int((torch.cumsum(s2, 0) / s2.sum() < 0.9).sum()) + 1
        assert r.rank == min(k, 16) and r.energy >= 0.9 - 1e-9, r
        ranks[r.module] = r.rank
    assert len(set(ranks.values())) > 1, "the fixture should need different ranks"
    for m, k in ranks.items():
        assert cfg["rank_pattern"].get(m, cfg["r"]) == k
        assert cfg["alpha_pattern"].get(m, cfg["lora_alpha"]) == k
    merged = peft_load(transformers.LlamaForCausalLM, llamas / "base", tmp_path / "lora")
    for m, k in ranks.items():
        w = m + ".weight"
        assert max_diff(merged[w] - base[w], truncation(ft[w] - base[w], k)) <= 1e-5, m


def test_gpt2_conv1d_fan_in_fan_out(tmp_path):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
                                  eos_token_id=0)
    randomize(transformers.GPT2LMHeadModel(cfg), 0).save_pretrained(tmp_path / "base")
    randomize(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base"), 1).save_pretrained(tmp_path / "ft")
    extract_lora(tmp_path / "base", tmp_path / "ft", tmp_path / "lora", rank=4)
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    merged = peft_load(transformers.GPT2LMHeadModel, tmp_path / "base", tmp_path / "lora")
    base, ft = state(transformers.GPT2LMHeadModel, tmp_path / "base"), state(transformers.GPT2LMHeadModel, tmp_path / "ft")
    name = "transformer.h.1.attn.c_attn.weight"  # Conv1D: stored (in, out)
    assert max_diff(merged[name] - base[name], truncation((ft[name] - base[name]).T, 4).T) <= 1e-5


def test_llava_language_model_against_its_base(tmp_path):
    base = randomize(transformers.LlavaForConditionalGeneration(llava_config()), seed=2)
    base.save_pretrained(tmp_path / "base")
    merged_mllm = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "base")
    randomize(merged_mllm.model.language_model, seed=3)
    merged_mllm.save_pretrained(tmp_path / "merged")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["extract-lora", "--base", str(tmp_path / "base"), "--model", str(tmp_path / "merged"),
                     "--rank", "3", "--out", str(tmp_path / "lora")]) == 0
    text = out.getvalue()
    assert "model.language_model.layers.1.mlp.down_proj" in text and "rel.err" in text
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert isinstance(cfg["target_modules"], str)  # anchored at the language model: the vision q_proj stay plain
    cls = transformers.LlavaForConditionalGeneration
    got = peft_load(cls, tmp_path / "base", tmp_path / "lora")
    b, m = state(cls, tmp_path / "base"), state(cls, tmp_path / "merged")
    n_checked = 0
    for name in b:
        if name.startswith("model.language_model.") and any(s in name for s in LINEARS) and name.endswith("weight"):
            assert max_diff(got[name] - b[name], truncation(m[name] - b[name], 3)) <= 1e-5, name
            n_checked += 1
        else:
            assert torch.equal(got[name], b[name]), name
    assert n_checked == 2 * len(LINEARS)


def test_extract_errors_are_one_line(llamas, tmp_path):
    transformers.LlamaForCausalLM(llama_config(intermediate_size=48)).save_pretrained(tmp_path / "other")
    for args, needle in (
        (["--base", str(llamas / "base"), "--model", str(tmp_path / "other"), "--rank", "2"], "gate_proj.weight has shape (64, 32)"),
        (["--base", str(llamas / "base"), "--model", str(llamas / "base"), "--rank", "2"], "nothing to extract"),
        (["--base", str(llamas / "base"), "--model", str(llamas / "ft"), "--energy", "1.5"], "energy"),
        (["--base", str(llamas / "base"), "--model", str(llamas / "ft"), "--component", "vision", "--rank", "2"],
         "no vision component"),
    ):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(["extract-lora", *args, "--out", str(tmp_path / "out")])
        assert code == 2 and err.getvalue().startswith("error: ") and needle in err.getvalue(), err.getvalue()
        assert len(err.getvalue().strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()
