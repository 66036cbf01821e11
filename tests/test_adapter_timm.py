"""timm hub folders: every hidden state of the transformers model equals timm's own forward, and the round
trip back to timm is bit-identical. Tiny real models are built offline and saved with `save_for_hf`."""

from __future__ import annotations

import json
import math

import pytest
import timm
import timm.data
import torch
import transformers
from safetensors.torch import load_file

from mmmerge.adapters import hf_export, timm_vision
from mmmerge.checkpoint import LazyTensor
from mmmerge.errors import ShapeMismatchError, UnreadableFileError, UnsupportedArchitectureError
from timm_sources import CASES, SMALL, make_timm, timm_forward

@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    arch, args, num_classes, hf_arch = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param) / "timm"
    model = make_timm(folder, arch, args, num_classes)
    return request.param, folder, model, hf_arch


def assert_close(a, b, what):
    assert a.shape == b.shape, what
    diff = (a - b).abs().max().item()
    assert diff <= 1e-4, f"{what}: max abs diff {diff}"


def test_transformers_matches_timm_forward(case, tmp_path):
    name, folder, model, hf_arch = case
    ckpt = timm_vision.read(folder)
    vision = ckpt.components["vision"]
    assert ckpt.format == "timm" and vision.arch == hf_arch
    left_out = hf_export.save_hf(vision, tmp_path / "hf")
    assert left_out == list(vision.extra)
    hf, info = transformers.AutoModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert type(hf).__name__ == hf_arch
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info

    size = model.patch_embed.img_size
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    states, feats, pooled, logits = timm_forward(model, x)
    with torch.no_grad():
        out = hf.eval()(pixel_values=x, output_hidden_states=True)
    assert len(out.hidden_states) == len(states) == len(model.blocks) + 1
    for i, (a, b) in enumerate(zip(out.hidden_states, states)):
        assert_close(a, b, f"{name} hidden state {i}")
    if hf_arch == "CLIPVisionModel":  # transformers' CLIP returns the blocks' output, normed only in the pooler
        assert_close(out.last_hidden_state, states[-1], f"{name} last hidden state")
    else:
        assert_close(out.last_hidden_state, feats, f"{name} last hidden state")
    if name == "odd":  # SigLIP without attention pooling: no pooled output on either side
        assert out.pooler_output is None and pooled.shape == feats.shape
    else:
        assert_close(out.pooler_output, pooled, f"{name} pooled output")
    if vision.extra:  # the CLIP projection reproduces timm's head
        proj = vision.tensors["visual_projection.weight"].load()
        assert_close(out.pooler_output @ proj.T, logits, f"{name} projection")


def test_image_processor_equals_timm_data_config(case, tmp_path):
    _, folder, _, _ = case
    hf_export.save_hf(timm_vision.read(folder).components["vision"], tmp_path / "hf")
    proc = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    cfg = timm.data.resolve_data_config({}, model=timm.create_model(f"local-dir:{folder}", pretrained=True))
    _, h, w = cfg["input_size"]
    assert cfg["crop_mode"] == "center"
    assert dict(proc.crop_size) == {"height": h, "width": w}
    assert dict(proc.size) == {"shortest_edge": math.floor(h / cfg["crop_pct"])}
    assert proc.image_mean == pytest.approx(list(cfg["mean"])) and proc.image_std == pytest.approx(list(cfg["std"]))
    assert int(proc.resample) == {"bicubic": 3, "bilinear": 2}[cfg["interpolation"]]


def test_round_trip_is_bit_identical_and_loads_in_timm(case, tmp_path):
    name, folder, model, _ = case
    ckpt = timm_vision.read(folder)
    timm_vision.write_source(ckpt, tmp_path / "out")
    before, after = load_file(folder / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(before) == set(after)
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config == json.loads((folder / "config.json").read_text())
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(1, 3, *model.patch_embed.img_size)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_what_no_component_holds_is_kept_and_named(tmp_path):
    ckpt = {}
    for name in ("clip_gelu", "siglip", "dinov2"):
        arch, args, num_classes, _ = CASES[name]
        make_timm(tmp_path / name, arch, args, num_classes)
        ckpt[name] = timm_vision.read(tmp_path / name)
    clip = ckpt["clip_gelu"]
    assert clip.components["vision"].extra == ("visual_projection.weight",)
    assert set(clip.outside) == set(clip.outside_reasons) == {"head.bias"}
    assert set(ckpt["siglip"].outside) == set(ckpt["siglip"].outside_reasons) == {"head.weight", "head.bias"}
    assert "classifier" in ckpt["siglip"].outside_reasons["head.weight"]
    dino = ckpt["dinov2"].components["vision"]
    assert dino.placeholders == ("embeddings.mask_token",) and not dino.tensors["embeddings.mask_token"].load().any()
    assert dino.config["mlp_ratio"] == 4 and dino.config["layer_norm_eps"] == 1e-6


def test_bin_and_half_precision_sources(tmp_path):
    arch, args, num_classes, _ = CASES["vit"]
    make_timm(tmp_path / "src", arch, args, num_classes, safe=False, dtype=torch.bfloat16)
    ckpt = timm_vision.read(tmp_path / "src")
    assert ckpt.components["vision"].dtypes().keys() == {"bfloat16"}
    timm_vision.write_source(ckpt, tmp_path / "out")
    before = torch.load(tmp_path / "src" / "pytorch_model.bin", weights_only=True)
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert set(before) == set(after)
    assert all(before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]) for k in before)


def test_register_class_position_folds_back_into_timm(tmp_path):
    """A changed (non-zero) class-token position in Dinov2WithRegisters still computes the same in timm."""
    arch, args, _, _ = CASES["dinov2_reg"]
    make_timm(tmp_path / "src", arch, args)
    ckpt = timm_vision.read(tmp_path / "src")
    vision = ckpt.components["vision"]
    pos = vision.tensors["embeddings.position_embeddings"].load().clone()
    pos[:, 0] = torch.randn(pos.shape[2])
    vision.tensors["embeddings.position_embeddings"] = LazyTensor.of(pos)
    hf_export.save_hf(vision, tmp_path / "hf")
    timm_vision.write_source(ckpt, tmp_path / "out")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert_close(hf(pixel_values=x).last_hidden_state, model.forward_features(x), "folded class position")


def test_detect(tmp_path):
    arch, args, num_classes, _ = CASES["vit"]
    make_timm(tmp_path / "timm", arch, args, num_classes)
    assert timm_vision.detect(tmp_path / "timm")
    hf_export.save_hf(timm_vision.read(tmp_path / "timm").components["vision"], tmp_path / "hf")
    assert not timm_vision.detect(tmp_path / "hf")
    assert not timm_vision.detect(tmp_path / "timm" / "config.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert not timm_vision.detect(tmp_path / "bad")


@pytest.mark.parametrize("arch, extra, match", [
    ("vit_base_patch16_224", dict(global_pool="avg"), "fc_norm"),
    ("vit_base_patch16_224", dict(global_pool="avg", fc_norm=False), "global pool 'avg'"),
    ("vit_base_patch16_siglip_gap_224", {}, "global pool 'avg'"),
    ("vit_base_patch16_224", dict(dynamic_img_size=True), "dynamic"),
    ("vit_base_patch16_224", dict(qk_norm=True), "q_norm"),
    ("vit_base_patch16_224", dict(qkv_bias=False), "qkv.bias"),
    ("vit_base_patch16_224", dict(no_embed_class=True), "no_embed_class"),
    ("vit_base_patch16_224", dict(patch_size=(8, 4)), "non-square patches"),
    ("vit_small_patch14_dinov2", dict(mlp_ratio=2.5), "whole multiple"),
    ("vit_giant_patch14_dinov2", {}, "plain Attention and Mlp"),  # SwiGLU MLP
    ("vit_base_patch16_224", dict(pre_norm=True, init_values=0.1), "matches no transformers model"),
    ("test_resnet", {}, "no timm VisionTransformer"),
])
def test_unsupported_variants_name_folder_and_feature(tmp_path, arch, extra, match):
    args = {} if arch.startswith("test_") else dict(SMALL, **extra)
    make_timm(tmp_path / "m", arch, args)
    with pytest.raises(UnsupportedArchitectureError, match=match) as err:
        timm_vision.read(tmp_path / "m")
    assert str(tmp_path / "m") in str(err.value) and "\n" not in str(err.value)


def test_broken_inputs_raise_one_line_errors(tmp_path):
    arch, args, num_classes, _ = CASES["vit"]
    src = tmp_path / "src"
    make_timm(src, arch, args, num_classes)
    cfg = json.loads((src / "config.json").read_text())

    def variant(name, config=None, weights=b""):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config or cfg))
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights or (src / "model.safetensors").read_bytes())
        return folder

    cases = [
        (variant("garbled", "{not json"), UnreadableFileError, "config.json"),
        (variant("unknown", dict(cfg, architecture="no_such_vit")), UnreadableFileError, "no_such_vit"),
        (variant("noweights", weights=None), UnreadableFileError, "no weights"),
        (variant("truncated", weights=(src / "model.safetensors").read_bytes()[:100]), UnreadableFileError,
         "model.safetensors"),
        (variant("wider", dict(cfg, model_args=dict(args, embed_dim=64))), ShapeMismatchError, "tensor cls_token"),
    ]
    for folder, error, match in cases:
        with pytest.raises(error, match=match) as err:
            timm_vision.read(folder)
        assert "\n" not in str(err.value)


def test_write_source_refuses_a_component_that_does_not_fit(tmp_path):
    arch, args, num_classes, _ = CASES["vit"]
    make_timm(tmp_path / "src", arch, args, num_classes)
    ckpt = timm_vision.read(tmp_path / "src")
    vision = ckpt.components["vision"]
    vision.tensors["embeddings.position_embeddings"] = LazyTensor.of(torch.zeros(1, 5, 32))
    with pytest.raises(ShapeMismatchError, match="pos_embed"):
        timm_vision.write_source(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    vision.tensors["something.else"] = LazyTensor.of(torch.zeros(1))
    with pytest.raises(UnsupportedArchitectureError, match="something.else"):
        timm_vision.vit_to_timm(vision)
