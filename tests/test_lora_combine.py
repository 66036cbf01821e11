"""`merge-loras` against peft's `add_weighted_adapter` on the same adapters (the oracle).

Our adapter is loaded back into the same peft model next to peft's combination, and the two updates
(`get_delta_weight`) must agree per module within 1e-5; for the deterministic A/B methods the factors
themselves must agree. svd is compared through B A (factor signs are free). dare draws random masks:
with one target module the random stream is the same as peft's after `torch.manual_seed(seed)`, so
the result is compared exactly; with several modules the order of draws differs (we go in adapter-file
order, peft in model order), so there only the statistics are checked.
"""

import contextlib
import io
import json
import os
import warnings

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from mmmerge.cli import main
from mmmerge.lora import read_adapter
from mmmerge.lora.combine import combine_module, merge_loras
from tiny import llama_config, max_diff, randomize

os.environ["HF_HUB_OFFLINE"] = "1"
TOL = 1e-5


def make_adapter(base_dir, out, seed, **cfg):
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM.from_pretrained(base_dir)
    get_peft_model(model, LoraConfig(init_lora_weights=False, **cfg)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("combine")
    randomize(transformers.LlamaForCausalLM(llama_config()), seed=0).save_pretrained(root / "base")
    targets = ["q_proj", "v_proj", "down_proj"]
    make_adapter(root / "base", root / "a1", 1, r=4, lora_alpha=8, target_modules=targets)
    make_adapter(root / "base", root / "a2", 2, r=4, lora_alpha=16, target_modules=targets + ["k_proj"])
    make_adapter(root / "base", root / "a3", 3, r=2, lora_alpha=2, use_rslora=True, target_modules=["q_proj", "up_proj"])
    one = ["model.layers.0.self_attn.q_proj"]
    make_adapter(root / "base", root / "o1", 4, r=4, lora_alpha=8, target_modules=one)
    make_adapter(root / "base", root / "o2", 5, r=4, lora_alpha=4, target_modules=one)
    return root


def peft_model(root, names):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(root / "base"),
                                          root / names[0], adapter_name=names[0])
        for n in names[1:]:
            model.load_adapter(root / n, adapter_name=n)
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not bad, bad
    return model


def layers(model, adapter):
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


def run(setup, tmp_path, names, method, weights, **kw):
    """(peft model holding peft's combination 'theirs' and ours 'ours')."""
    out = tmp_path / f"ours_{method}"
    merge_loras([setup / n for n in names], out, method=method, weights=weights, **kw)
    model = peft_model(setup, names)
    if kw.get("seed") is not None:
        torch.manual_seed(kw["seed"])
    model.add_weighted_adapter(names, weights, "theirs", combination_type=method, density=kw.get("density"),
                               svd_rank=kw.get("rank"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_adapter(out, adapter_name="ours")
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not bad, bad
    return model


@pytest.mark.parametrize("method,names,weights,kw", [
    ("cat", ["a1", "a2", "a3"], [0.7, -0.4, 1.3], {}),
    ("svd", ["a1", "a2", "a3"], [0.7, 0.4, 1.3], {"rank": 3}),
    ("svd", ["a1", "a2"], [1.0, 0.5], {}),
    ("linear", ["a1", "a2"], [0.6, -0.5], {}),
    ("ties", ["a1", "a2"], [0.6, 0.9], {"density": 0.5}),
    ("magnitude_prune", ["a1", "a2"], [0.6, 0.9], {"density": 0.3}),
    ("ties_svd", ["a1", "a2"], [0.6, 0.9], {"density": 0.5, "rank": 4}),
])
def test_matches_peft(setup, tmp_path, method, names, weights, kw):
    model = run(setup, tmp_path, names, method, weights, **kw)
    theirs, ours = layers(model, "theirs"), layers(model, "ours")
    assert set(ours) == set(theirs) and len(ours) >= 6
    for n, m in theirs.items():
        d_theirs, d_ours = m.get_delta_weight("theirs"), m.get_delta_weight("ours")
        assert d_theirs.abs().max() > 1e-3, n  # the comparison is not between zeros
        assert max_diff(d_ours, d_theirs) <= TOL, (n, max_diff(d_ours, d_theirs))
        if method in ("linear", "ties", "magnitude_prune"):
            assert max_diff(m.lora_A["ours"].weight, m.lora_A["theirs"].weight) <= TOL
            assert max_diff(m.lora_B["ours"].weight, m.lora_B["theirs"].weight) <= TOL
    if method == "cat":  # exact: B A = sum w s B_i A_i, from the inputs themselves
        for n, m in theirs.items():
            want = sum(w * m.get_delta_weight(a) for a, w in zip(names, weights) if a in m.lora_A)
            assert max_diff(m.get_delta_weight("ours"), want) <= TOL, n
        cfg = json.loads((tmp_path / "ours_cat" / "adapter_config.json").read_text())
        assert cfg["rank_pattern"]["model.layers.0.self_attn.q_proj"] == 10 and cfg["r"] == 8


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "dare_linear_svd"])
def test_dare_same_random_state_as_peft(setup, tmp_path, method, monkeypatch):
    """peft draws its masks from the global generator after initialising the new adapter; we take the
    generator's state at peft's first draw and give it to our module combination: the masks must agree."""
    import peft.utils.merge_utils as mu

    states, original = [], mu.random_pruning

    def spy(tensor, density, rescale):
        if not states:
            states.append(torch.get_rng_state())
        return original(tensor, density, rescale)

    monkeypatch.setattr(mu, "random_pruning", spy)
    model = peft_model(setup, ["o1", "o2"])
    torch.manual_seed(0)
    model.add_weighted_adapter(["o1", "o2"], [0.8, 0.5], "theirs", combination_type=method, density=0.5)
    (name, m), = layers(model, "theirs").items()
    mods = [read_adapter(setup / a).modules[name.removeprefix("base_model.model.")] for a in ("o1", "o2")]
    g = torch.Generator()
    g.set_state(states[0])
    A, B = combine_module(method, mods, [0.8, 0.5], density=0.5, rank=4, generator=g)
    assert max_diff(B @ A, m.get_delta_weight("theirs")) <= TOL
    if not method.endswith("svd"):
        assert torch.equal(A == 0, m.lora_A["theirs"].weight == 0) and (A == 0).any()
    # another random state draws other masks: the agreement above is not by construction
    A2, B2 = combine_module(method, mods, [0.8, 0.5], density=0.5, rank=4, generator=torch.Generator().manual_seed(9))
    assert max_diff(B2 @ A2, m.get_delta_weight("theirs")) > 1e-3


def test_seed_makes_dare_reproducible(setup, tmp_path):
    for name, seed in (("x", 5), ("y", 5), ("z", 6)):
        merge_loras([setup / "a1", setup / "a2"], tmp_path / name, method="dare_ties", weights=[1, 1], density=0.5,
                    seed=seed)
    x, y, z = (read_adapter(tmp_path / n).modules for n in "xyz")
    assert all(torch.equal(x[n].delta(), y[n].delta()) for n in x)
    assert any(not torch.equal(x[n].delta(), z[n].delta()) for n in x)


def test_dare_statistics_on_many_modules(setup, tmp_path):
    """Every module: about density of each factor survives, rescaled by 1/density; the mean is unbiased."""
    merge_loras([setup / "a1"], tmp_path / "d", method="dare_linear", weights=[1.0], density=0.25, seed=0)
    merge_loras([setup / "a1"], tmp_path / "l", method="linear", weights=[1.0])
    dare, lin = read_adapter(tmp_path / "d").modules, read_adapter(tmp_path / "l").modules
    kept = total = 0
    for n, m in dare.items():
        A, A_lin = m.A.load(), lin[n].A.load()
        nz = A != 0
        kept, total = kept + int(nz.sum()), total + A.numel()
        assert torch.allclose(A[nz], A_lin[nz] / 0.25, atol=1e-6)
    assert abs(kept / total - 0.25) < 0.03


def run_cli(args):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["merge-loras", *args])
    return code, err.getvalue()


def test_bad_inputs_one_line_nothing_written(setup, tmp_path):
    wide = tmp_path / "wide"
    transformers.LlamaForCausalLM(llama_config(hidden_size=48)).save_pretrained(wide)
    make_adapter(wide, tmp_path / "w1", 7, r=4, target_modules=["q_proj"])
    cfg = json.loads((tmp_path / "w1" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(setup / "base")  # lie about the base: shapes still give it away
    (tmp_path / "w1" / "adapter_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    for args, needle in (
        ([str(setup / "a1"), str(tmp_path / "w1")], "shape"),
        ([str(setup / "a1"), str(setup / "a3"), "--method", "linear"], "same rank"),
        ([str(setup / "a1"), str(setup / "a2"), "--method", "ties"], "--density"),
        ([str(setup / "a1"), str(setup / "a2"), "--weights", "1"], "weights"),
        ([str(setup / "a1"), str(setup / "base")], "adapter_config.json"),
    ):
        code, err = run_cli([*args, "--out", str(out)])
        assert code == 2 and err.startswith("error: ") and needle in err, err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()
    code, err = run_cli([str(setup / "a1"), str(setup / "a2"), "--method", "cat", "--out", str(out)])
    assert code == 0 and (out / "adapter_model.safetensors").is_file()
