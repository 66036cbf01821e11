"""Projector modules against transformers' LlavaMultiModalProjector and LLaVA's own builder; closed-form fits
against torch's least squares and scipy's Procrustes; projector files; shared vocabularies."""

import re

import pytest
import torch
import transformers
from scipy.linalg import orthogonal_procrustes
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from mmmerge.errors import RecipeError, ShapeMismatchError, UnsupportedArchitectureError
from mmmerge.projectors import (Projector, build, compose, fit_linear, load_projector, procrustes, ridge,
                                save_projector, to_llava)
from mmmerge.projectors.language import shared_vocabulary
from tiny import clip_vision_config, llama_config, max_diff
from tiny_tokenizer import make_tokenizer


def llava_projector(state, act, bias=True, vision=24, text=32):
    """transformers' own projector module holding `state`."""
    cfg = transformers.LlavaConfig(vision_config=clip_vision_config(hidden_size=vision).to_dict(),
                                   text_config=llama_config(hidden_size=text).to_dict(), projector_hidden_act=act,
                                   multimodal_projector_bias=bias)
    module = LlavaMultiModalProjector(cfg)
    module.load_state_dict(state, strict=True)
    return module.eval()


def llava_builder(projector_type, vision, text):
    """LLaVA's `build_vision_projector` (llava/model/multimodal_projector/builder.py), as written there."""
    if projector_type == "linear":
        return torch.nn.Linear(vision, text)
    depth = int(re.match(r"^mlp(\d+)x_gelu$", projector_type).group(1))
    modules = [torch.nn.Linear(vision, text)]
    for _ in range(1, depth):
        modules += [torch.nn.GELU(), torch.nn.Linear(text, text)]
    return torch.nn.Sequential(*modules)


X = torch.randn(5, 7, 24, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind, bias", [("mlp2x_gelu", True), ("linear", True), ("linear", False), ("identity", True)])
def test_projector_runs_as_llava_projector(kind, bias):
    size = 32 if kind == "identity" else 24
    p = build(kind, size, 32, bias=bias, seed=1)
    if kind == "mlp2x_gelu":  # the same state dict as transformers' module
        assert sorted(p.state_dict()) == sorted(LlavaMultiModalProjector(transformers.LlavaConfig(
            vision_config=clip_vision_config(hidden_size=24).to_dict(), text_config=llama_config().to_dict())).state_dict())
    state, act, has_bias = to_llava(p, 32)
    x = torch.randn(3, 5, size)
    module = llava_projector(state, act, has_bias, vision=size)
    with torch.no_grad():
        assert max_diff(module(x), p(x)) <= 1e-6
    if kind == "identity":
        assert max_diff(module(x), x) <= 1e-6


@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu", "mlp3x_gelu"])
def test_projector_loads_llava_builder_weights(kind, tmp_path):
    """An original LLaVA `mm_projector.bin` (nn.Sequential indices 0, 2, 4) computes what LLaVA's module computes."""
    torch.manual_seed(0)
    original = llava_builder(kind, 24, 32).eval()
    torch.save({f"model.mm_projector.{k}": v for k, v in original.state_dict().items()}, tmp_path / "mm_projector.bin")
    source = load_projector(tmp_path)
    assert source.format == "llava-original" and source.projector.projector_type == kind
    assert (source.vision_feature_layer, source.vision_feature_select_strategy) == (-2, "default")
    with torch.no_grad():
        assert max_diff(source.projector(X), original(X)) <= 1e-6
    if kind == "mlp3x_gelu":
        with pytest.raises(UnsupportedArchitectureError, match="at most 2"):
            to_llava(source.projector, 32)


def test_smaller_hidden_is_padded_exactly():
    """A transferred mlp2x whose hidden width (24) is below the text size (40) fits LLaVA with zero units."""
    p = Projector("mlp2x_gelu", 16, 40, hidden_features=24)
    state, act, bias = to_llava(p, 40)
    assert state["linear_1.weight"].shape == (40, 16)
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert max_diff(llava_projector(state, act, bias, vision=16, text=40)(x), p(x)) <= 1e-6
    with pytest.raises(UnsupportedArchitectureError, match="hidden size 24 is larger"):
        to_llava(Projector("mlp2x_gelu", 16, 20, hidden_features=24), 20)
    with pytest.raises(UnsupportedArchitectureError, match="sigmoid"):
        to_llava(Projector("mlp2x_sigmoid", 16, 40, hidden_features=24), 40)
    with pytest.raises(ShapeMismatchError, match="outputs 40 features"):
        to_llava(p, 32)


def test_compose_folds_an_affine_map():
    g = torch.Generator().manual_seed(3)
    A, c = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    for kind in ("mlp2x_gelu", "linear", "identity"):
        p = build(kind, 32, 32, seed=2, bias=kind != "linear")
        q = compose(p, A, c)
        assert q.out_features == 48
        x = torch.randn(6, 32, generator=g)
        with torch.no_grad():
            assert max_diff(q(x), p(x) @ A.T + c) <= 1e-4


def test_types_are_checked():
    with pytest.raises(RecipeError, match="mlp2x_gelu"):
        build("conv", 8, 8)
    with pytest.raises(ShapeMismatchError, match="equal sizes"):
        build("identity", 8, 16)


def test_ridge_matches_least_squares_and_its_optimality_condition():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 12, generator=g, dtype=torch.float64)
    W, b = torch.randn(7, 12, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    Y = X @ W.T + b + 0.01 * torch.randn(200, 7, generator=g, dtype=torch.float64)
    # without regularisation: torch's least squares on [X, 1]
    fit = ridge(X, Y, alpha=0.0)
    sol = torch.linalg.lstsq(torch.cat([X, torch.ones(200, 1, dtype=X.dtype)], 1), Y).solution
    assert max_diff(fit.weight, sol[:-1].T) <= 1e-4 and max_diff(fit.bias, sol[-1]) <= 1e-4
    assert 0 < fit.residual < 0.01
    # regularised, fewer pairs than dimensions: the gradient of the ridge objective vanishes at the solution
    Xs, Ys = X[:8], Y[:8]
    fit = ridge(Xs, Ys, alpha=0.1)
    Xc, Yc = Xs - Xs.mean(0), Ys - Ys.mean(0)
    lam = 0.1 * float((Xc.T @ Xc).diagonal().mean())
    grad = Xc.T @ (Xc @ fit.weight.double().T - Yc) + lam * fit.weight.double().T
    assert grad.abs().max() <= 1e-4
    assert max_diff(fit.bias, Ys.mean(0) - fit.weight.double() @ Xs.mean(0)) <= 1e-5


def test_procrustes_matches_scipy_and_recovers_a_rotation():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(100, 10, generator=g, dtype=torch.float64)
    R, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    Y = 2.5 * X @ R.T + 3.0
    fit = procrustes(X, Y)
    assert fit.residual <= 1e-6 and max_diff(fit.weight, 2.5 * R) <= 1e-5 and max_diff(fit.bias, torch.full((10,), 3.0)) <= 1e-5
    # noisy: the rotation is scipy's orthogonal Procrustes solution on centered data
    Yn = Y + 0.5 * torch.randn(100, 10, generator=g, dtype=torch.float64)
    fit = procrustes(X, Yn)
    Q, _ = orthogonal_procrustes((X - X.mean(0)).numpy(), (Yn - Yn.mean(0)).numpy())  # X Q ≈ Y
    W = fit.weight.double()
    assert max_diff(W / W.norm(dim=1, keepdim=True), torch.from_numpy(Q).T) <= 1e-4
    assert fit.residual > 0.05
    with pytest.raises(RecipeError, match="unknown"):
        fit_linear(X, Y, "lasso")


def test_projector_file_round_trip(tmp_path):
    p = build("mlp2x_gelu", 24, 32, seed=5)
    path = save_projector(tmp_path / "p.safetensors", p, vision_feature_layer=-1, vision_feature_select_strategy="full",
                          info={"fit_residual": 0.25})
    source = load_projector(path)
    assert source.format == "mmmerge" and source.info == {"fit_residual": 0.25}
    assert (source.vision_feature_layer, source.vision_feature_select_strategy) == (-1, "full")
    with torch.no_grad():
        assert max_diff(source.projector(X), p(X)) == 0
    ident = load_projector(save_projector(tmp_path / "id", build("identity", 8, 8)))
    assert ident.projector.projector_type == "identity" and ident.projector.in_features == 8


def test_shared_vocabulary_pairs_equal_strings():
    a = make_tokenizer(sentences=["the red cat sat", "a blue dog"])
    b = make_tokenizer(sentences=["a dog and a cat", "green grass"])
    ia, ib = shared_vocabulary(a, b)
    words = {a.convert_ids_to_tokens(int(i)) for i in ia}
    assert words == {"cat", "a", "dog"}  # specials (<s>, <unk> ...) left out
    assert [a.convert_ids_to_tokens(int(i)) for i in ia] == [b.convert_ids_to_tokens(int(i)) for i in ib]
