"""An inf that every input holds at the same place is kept in the output, by every method (gemma4's clipped linears
hold +-inf bounds unless a checkpoint sets them, and such checkpoints used to be refused); an inf that not every input
holds, or +inf against -inf, still stops the merge with one line naming the tensor and the input, writing nothing."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmmerge.engine import merge
from mmmerge.errors import NonFiniteError
from mmmerge.methods import REGISTRY, _fused_half
from cli_run import one_line_error, run
from mergekit_oracle import TOL, W, mergekit_result
from tiny_world import make_lm

TENSOR = "model.layers.0.mlp.up_proj.weight"
AT = (3, 5)
INF = float("inf")


def with_values(src, dst, name, *places):
    """A copy of the model folder `src` at `dst` with tensor `name` holding (index, value) `places`."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    for index, value in places:
        tensors[name][index] = value
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """Three tiny Llamas that all hold +inf at TENSOR[AT]."""
    root = tmp_path_factory.mktemp("lms")
    return [with_values(make_lm(root / f"plain{seed}", seed=seed), root / f"inf{seed}", TENSOR, (AT, INF))
            for seed in range(3)]


def recipe(method: str, models, dtype: str | None = None) -> dict:
    spec = REGISTRY[method]
    n = spec.max_models if spec.max_models is not None else max(2, spec.min_models)
    params = {k: 0.5 for k in ("weight", "density") if k in spec.model_params}
    cfg = {"merge_method": method, "models": [{"model": str(m), "parameters": params} for m in models[:n]]}
    if spec.base == "required":
        cfg["base_model"] = str(models[-1])
    glob = {k: 0.5 for k in ("t", "select_topk") if k in spec.global_params}
    if glob:
        cfg["parameters"] = glob
    if dtype is not None:
        cfg["dtype"] = dtype
    return cfg


def assert_kept_and_finite_elsewhere(out, value=INF):
    merged = load_file(out / "model.safetensors")
    t = merged[TENSOR]
    assert t[AT].item() == value
    assert int(torch.isfinite(t).sum()) == t.numel() - 1
    assert all(bool(torch.isfinite(v).all()) for k, v in merged.items() if k != TENSOR)
    return merged


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_keeps_the_inf_every_input_holds(lms, tmp_path, method):
    assert_kept_and_finite_elsewhere(merge(recipe(method, lms), tmp_path / "out", quiet=True, seed=0))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties"])
def test_in_every_dtype_and_in_the_compiled_bf16_merge(lms, tmp_path, monkeypatch, method, dtype):
    """bf16 TIES and task arithmetic run the compiled kernels (which refuse inf in a task vector themselves)."""
    calls = []
    real = _fused_half.merge
    monkeypatch.setattr(_fused_half, "merge", lambda *a, **k: calls.append(1) or real(*a, **k))
    merged = assert_kept_and_finite_elsewhere(merge(recipe(method, lms, dtype), tmp_path / "out", quiet=True, seed=0))
    assert merged[TENSOR].dtype == getattr(torch, dtype)
    if method in ("task_arithmetic", "ties") and dtype == "bfloat16":
        assert calls


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_equals_mergekit_where_mergekit_is_finite(lms, tmp_path, method):
    """mergekit's kernel as the oracle: linear gives the inf itself; task arithmetic gives inf - inf = NaN at that
    place (where mmmerge keeps the inputs' inf, README Reliability) and the same values everywhere else."""
    out = merge({**recipe(method, lms), "dtype": "float32"}, tmp_path / "out", quiet=True)
    merged = load_file(out / "model.safetensors")[TENSOR]
    inputs = [load_file(m / "model.safetensors")[TENSOR] for m in lms]
    base = None if method == "linear" else inputs[2]
    theirs = mergekit_result(method, inputs[:2], base, W(0.5, 0.5), {})
    assert torch.isinf(theirs[AT]) if method == "linear" else torch.isnan(theirs[AT])
    elsewhere = torch.isfinite(theirs)
    assert int(elsewhere.sum()) == theirs.numel() - 1
    assert (merged[elsewhere] - theirs[elsewhere]).abs().max() <= TOL
    assert merged[AT].item() == INF


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_random_stream_goes_on_as_after_one_merge(lms, tmp_path, dtype):
    """With one random stream (a seeded DARE), the tensor holding agreed infs is merged a second time without them;
    its draws are then taken again from where they began, so every tensor after it gets the masks it gets when no
    input holds that inf (mergekit's stream advances once per tensor)."""
    plain = [m.parent / f"plain{i}" for i, m in enumerate(lms)]
    cfg = {**recipe("dare_ties", lms, dtype)}
    with_inf = load_file(merge(cfg, tmp_path / "inf", quiet=True, seed=0) / "model.safetensors")
    cfg["models"] = [{**m, "model": str(p)} for m, p in zip(cfg["models"], plain)]
    cfg["base_model"] = str(plain[len(cfg["models"])])
    without = load_file(merge(cfg, tmp_path / "plain", quiet=True, seed=0) / "model.safetensors")
    assert with_inf[TENSOR][AT].item() == INF
    assert set(with_inf) == set(without)
    differ = [k for k in with_inf if k != TENSOR and not torch.equal(with_inf[k], without[k])]
    assert not differ, differ


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["linear", "ties"])
def test_on_cuda(lms, tmp_path, method):
    assert_kept_and_finite_elsewhere(merge(recipe(method, lms), tmp_path / "out", quiet=True, device="cuda"))


def test_an_inf_not_every_input_holds_is_refused_in_one_line(lms, tmp_path):
    """Beside an agreed inf, another that one input holds alone: that input is named, with that one value."""
    lone = with_values(lms[1], tmp_path / "lone", TENSOR, ((0, 0), INF))
    cfg = tmp_path / "r.json"
    cfg.write_text(json.dumps(recipe("linear", [lms[0], lone])))
    r = run("merge", cfg, "--out", tmp_path / "out", "--quiet")
    one_line_error(r, f"tensor {TENSOR}: {lone} holds 1 non-finite value")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lone", "r.json"]


def test_plus_and_minus_inf_at_one_place_are_refused(lms, tmp_path):
    minus = with_values(lms[1], tmp_path / "minus", TENSOR, (AT, -INF))
    cfg = tmp_path / "r.json"
    cfg.write_text(json.dumps(recipe("ties", [lms[0], minus, lms[2]])))
    r = run("merge", cfg, "--out", tmp_path / "out", "--quiet")
    one_line_error(r, f"tensor {TENSOR}: {lms[0]} holds 1 non-finite value")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minus", "r.json"]


def test_nan_every_input_holds_is_refused(lms, tmp_path):
    """NaN holds no value to keep: a checkpoint with NaN is broken, even where every input is."""
    nans = [with_values(m, tmp_path / f"nan{i}", TENSOR, ((0, 0), float("nan"))) for i, m in enumerate(lms[:2])]
    with pytest.raises(NonFiniteError, match=rf"^tensor {TENSOR}: {nans[0]} holds 1 non-finite value"):
        merge(recipe("linear", nans), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


# ---- gemma4: the checkpoints this is for ----------------------------------------------------------------------------

BOUNDS = ("input_min", "input_max", "output_min", "output_max")


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    """Two tiny gemma4 checkpoints with an audio tower (outside the components, merged by a plain recipe too) and
    clipped vision linears (merged), their bounds the +-inf transformers builds (perturb_ moves parameters only)."""
    import transformers as T

    from tiny_any_family import model_class, perturb_, tiny_config

    root = tmp_path_factory.mktemp("gemma4")
    for seed in (0, 1):
        config = tiny_config("gemma4")
        config.audio_config = T.Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                  output_proj_dims=32, subsampling_conv_channels=[8, 8])
        config.vision_config.use_clipped_linears = True
        torch.manual_seed(seed)
        perturb_(model_class("gemma4")._from_config(config), seed).save_pretrained(root / str(seed))
    return root / "0", root / "1"


def bounds(tensors: dict) -> dict:
    return {k: v for k, v in tensors.items() if k.endswith(BOUNDS)}


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_gemma4_bounds_are_the_inputs_inf(gemma4, tmp_path, method):
    """Every bound of the merge is the inputs' inf, and transformers loads them into every clipped linear."""
    from tiny_any_family import model_class

    a, b = gemma4
    cfg = {"merge_method": method, "models": [{"model": str(m), "parameters": {"weight": 0.5, "density": 0.5}}
                                              for m in (a, b)]}
    if method == "ties":
        cfg["base_model"] = str(a)
    out = merge(cfg, tmp_path / "out", quiet=True)
    merged, theirs = (bounds(load_file(m / "model.safetensors")) for m in (out, a))
    assert any("audio_tower" in k for k in theirs) and any("vision_tower" in k for k in theirs)
    assert merged.keys() == theirs.keys() and all(torch.equal(merged[k], v) for k, v in theirs.items())
    model = model_class("gemma4").from_pretrained(out)
    clipped = [m for m in model.modules() if type(m).__name__ == "Gemma4ClippableLinear" and m.use_clipped_linears]
    assert len(clipped) * len(BOUNDS) == len(theirs)
    for m in clipped:
        assert m.input_min == m.output_min == -INF and m.input_max == m.output_max == INF


def test_a_finished_merge_lets_go_of_its_kept_buffers(lms, tmp_path, monkeypatch):
    """The slice-wise methods keep their temporaries from tensor to tensor (DARE's whole-tensor magnitudes are
    0.5 GiB at 1B); a merge that is done lets them go, so a process that goes on does not hold them."""
    from mmmerge.methods import _common

    seen, kept = [], _common.scratch
    monkeypatch.setattr(_common, "scratch", lambda key, *args: seen.append(key) or kept(key, *args))
    merge(recipe("dare_ties", lms, "bfloat16"), tmp_path / "out", quiet=True, seed=0)
    assert seen  # the merge kept buffers ...
    assert not getattr(_common._SCRATCH, "buffers", {})  # ... and let them go
