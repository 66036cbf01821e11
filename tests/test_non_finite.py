"""NaN and inf: in an input checkpoint, every merge method stops with the same one-line error naming the tensor and
the checkpoint that holds them (TIES and breadcrumbs used to crash with an IndexError, the SVD methods with a
LinAlgError); merge-loras and extract-lora name the adapter or model; NaN/inf weights, learning rates and lora_alpha
are refused before any work, and so is casting weights to an integer dtype (which wrote all-zero weights)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmmerge.engine import merge
from mmmerge.errors import NonFiniteError
from mmmerge.methods import REGISTRY, merge_tensor
from cli_run import one_line_error, run
from tiny_world import build_world, make_lora, snapshot

BAD_TENSOR = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("world"))
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        shutil.copytree(w["ft"], w["ft"].parent / name)
        tensors = load_file(w["ft"].parent / name / "model.safetensors")
        tensors[BAD_TENSOR][3, 5] = value
        save_file(tensors, w["ft"].parent / name / "model.safetensors", metadata={"format": "pt"})
        w[name] = w["ft"].parent / name
    return w


def recipe(method: str, bad, w) -> dict:
    spec = REGISTRY[method]
    n = spec.max_models if spec.max_models is not None else max(2, spec.min_models)
    models = ([bad, w["ft"]] if spec.uses_base else [bad, w["ft"], w["lm"]])[:n]
    params = {k: 0.5 for k in ("weight", "density") if k in spec.model_params}
    cfg = {"merge_method": method, "models": [{"model": str(m), "parameters": params} for m in models]}
    if spec.base == "required":
        cfg["base_model"] = str(w["lm"])
    glob = {k: 0.5 for k in ("t", "select_topk") if k in spec.global_params}
    if glob:
        cfg["parameters"] = glob
    return cfg


# a method of one input (passthrough) copies that input's inf: it is every input's (tests/test_agreed_inf.py)
NOT_EVERY_INPUT = [(m, v) for m in sorted(REGISTRY) for v in ("nan", "inf")
                   if not (v == "inf" and REGISTRY[m].max_models == 1 and not REGISTRY[m].uses_base)]


@pytest.mark.parametrize("method, value", NOT_EVERY_INPUT)
def test_every_method_names_the_tensor_and_the_input(world, tmp_path, method, value):
    with pytest.raises(NonFiniteError, match=rf"^tensor {BAD_TENSOR}: {world[value]} holds 1 non-finite value"):
        merge(recipe(method, world[value], world), tmp_path / "out", quiet=True, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_the_base_model_is_named_too_and_the_cli_says_it_in_one_line(world, tmp_path):
    cfg = {"merge_method": "ties", "base_model": str(world["nan"]),
           "models": [{"model": str(world["ft"]), "parameters": {"weight": 1, "density": 0.5}}]}
    (tmp_path / "r.yml").write_text(json.dumps(cfg))
    r = run("merge", tmp_path / "r.yml", "--out", tmp_path / "out", "--quiet")
    one_line_error(r, f"tensor {BAD_TENSOR}: {world['nan']}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yml"]


@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "tsv_merge", "iso_c"])
def test_merge_tensor_raises_the_error_not_an_index_or_linalg_error(method):
    base = torch.randn(8, 8)
    bad = base + 0.1 * torch.randn(8, 8)
    bad[2, 2] = float("nan")
    params = [{k: 0.5 for k in ("weight", "density") if k in REGISTRY[method].model_params}] * 2
    with pytest.raises(NonFiniteError, match=rf"{method}: input 0 holds 1 non-finite value"):
        merge_tensor(method, [bad, base + 0.1], base, params)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("method", ["ties", "breadcrumbs"])
def test_half_precision_merges_name_the_input_too(method, value, dtype):
    """In mergekit's half-precision arithmetic the selection reads half-precision bit patterns: inf and NaN
    have their own there (float16's are not float32's), and still stop the merge with the input's name."""
    base = torch.randn(64, 64).to(dtype)
    bad = (base.float() + 0.1 * torch.randn(64, 64)).to(dtype)
    bad[2, 2] = value
    params = [{k: 0.5 for k in ("weight", "density") if k in REGISTRY[method].model_params}] * 2
    with pytest.raises(NonFiniteError, match=rf"{method}: input 0 holds 1 non-finite value"):
        merge_tensor(method, [bad, (base.float() + 0.1).to(dtype)], base, params, native_dtype=dtype)


def test_merge_loras_names_the_adapter_and_refuses_non_finite_weights(world, tmp_path):
    bad_a = torch.randn(2, 32)
    bad_a[0, 1] = float("inf")
    bad = make_lora(tmp_path / "bad", 3, a=bad_a)
    for method in ("cat", "linear", "svd", "ties"):
        r = run("merge-loras", world["lora1"], bad, "--method", method, "--density", "0.5", "--out", tmp_path / "o")
        one_line_error(r, "module model.layers.0.self_attn.q_proj", str(bad), "non-finite")
    for weights in (("nan", "1"), ("1", "inf"), ("1e999", "1")):
        r = run("merge-loras", world["lora1"], world["lora2"], "--weights", *weights, "--out", tmp_path / "o")
        one_line_error(r, "weights must be finite numbers")
    nan_alpha = make_lora(tmp_path / "nan_alpha", 4, alpha=float("nan"))
    one_line_error(run("merge-loras", world["lora1"], nan_alpha, "--out", tmp_path / "o"), "lora_alpha nan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "nan_alpha"]


def test_extract_lora_names_the_model(world, tmp_path):
    r = run("extract-lora", "--base", world["lm"], "--model", world["nan"], "--rank", "2", "--out", tmp_path / "o")
    one_line_error(r, f"tensor {BAD_TENSOR}: {world['nan']} holds 1 non-finite value")
    assert list(tmp_path.iterdir()) == []


def test_stitch_refuses_an_integer_dtype_and_a_non_finite_learning_rate(world, tmp_path):
    args = ("stitch", "--vision", world["vision"], "--language", world["lm"], "--projector-type", "linear",
            "--out", tmp_path / "o", "--quiet")
    for extra, needle in ((("--dtype", "int8"), "dtype int8 is not a floating-point dtype"),
                          (("--dtype", "bool"), "dtype bool is not a floating-point dtype"),
                          (("--lr", "nan"), "lr must be a finite number"),
                          (("--lr", "inf"), "lr must be a finite number"),
                          (("--lr", "0"), "lr must be above 0")):
        one_line_error(run(*args, *extra), needle)
    assert list(tmp_path.iterdir()) == []
    before = snapshot(world["lm"])
    assert run(*args, "--dtype", "bfloat16").returncode == 0  # a floating dtype still works
    assert snapshot(world["lm"]) == before
