"""open_clip hub folders: the vision tower computes what open_clip computes, loads in transformers, round-trips."""

import json
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from torchvision import transforms as T

from mmmerge.adapters import detect_adapter, open_clip_vision
from mmmerge.adapters.hf_export import save_hf
from mmmerge.errors import (OutputExistsError, ShapeMismatchError, UnreadableFileError, UnsafeCheckpointError,
                            UnsupportedArchitectureError)
from open_clip_sources import CASES, VISION, make_folder, open_clip_states, source_tensors
from tiny import max_diff

@pytest.mark.parametrize("case", CASES)
def test_vision_tower_matches_open_clip(case, tmp_path):
    make_folder(tmp_path / "src", **CASES[case])
    model = open_clip.create_model(f"local-dir:{tmp_path / 'src'}").eval()  # what open_clip reads from the folder
    assert detect_adapter(tmp_path / "src") is open_clip_vision
    ckpt = open_clip_vision.read(tmp_path / "src")
    vision = ckpt.component("vision")
    assert vision.arch == ("SiglipVisionModel" if case == "siglip" else "CLIPVisionModel")
    assert ckpt.source_config == json.loads((tmp_path / "src/open_clip_config.json").read_text())
    # nothing dropped silently: every tensor is in the component or in `rest`, which `ignored` explains;
    # only zero tensors of the vision tower (a timm head's bias) stay behind
    assert all(not k.startswith("visual.") or not ckpt.outside[k].load().any() for k in ckpt.outside)
    assert all(any(k.startswith(p) for p in ckpt.outside_reasons) for k in ckpt.outside)
    assert any(k.startswith("text.") or k.startswith("transformer.") for k in ckpt.outside)

    left_out = save_hf(vision, tmp_path / "hf")
    assert left_out == list(vision.extra)
    hf, info = transformers.AutoModel.from_pretrained(tmp_path / "hf", output_loading_info=True, dtype=torch.float32)
    assert type(hf).__name__ == vision.arch
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    if hasattr(model.visual, "ln_pre"):  # an eps change is too small to show in the hidden states
        assert hf.config.layer_norm_eps == model.visual.ln_pre.eps

    size = model.visual.image_size[0]
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    want, embedding = open_clip_states(model, pixels)
    with torch.no_grad():
        got = hf.eval()(pixel_values=pixels, output_hidden_states=True)
    assert len(got.hidden_states) == len(want) == hf.config.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(want, got.hidden_states)):
        assert a.shape == b.shape and max_diff(a, b) <= 1e-4, f"hidden state {i}"

    if case == "siglip":  # the attention-pooling head is the image embedding (timm_proj 'none')
        assert max_diff(got.pooler_output, embedding) <= 1e-4
    else:  # post_layernorm(class token) @ proj, from the canonical tensors
        w = {k: t.load().float() for k, t in vision.tensors.items()}
        pooled = F.layer_norm(got.hidden_states[-1][:, 0], (hf.config.hidden_size,), w["post_layernorm.weight"],
                              w["post_layernorm.bias"], hf.config.layer_norm_eps)
        assert max_diff(pooled @ w["visual_projection.weight"].T, embedding) <= 1e-4

    # the image processor transformers loads equals open_clip's eval transform
    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'src'}")
    steps = {type(t): t for t in transform.transforms}
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    resize, normalize = steps[T.Resize], steps[T.Normalize]
    pil = {T.InterpolationMode.BICUBIC: 3, T.InterpolationMode.BILINEAR: 2}[resize.interpolation]
    assert processor.resample == pil
    assert list(processor.image_mean) == pytest.approx(list(normalize.mean))
    assert list(processor.image_std) == pytest.approx(list(normalize.std))
    if T.CenterCrop in steps:
        assert processor.size.shortest_edge == resize.size and processor.do_center_crop
        assert (processor.crop_size.height, processor.crop_size.width) == tuple(steps[T.CenterCrop].size)
    else:
        assert (processor.size.height, processor.size.width) == tuple(resize.size)
        assert not getattr(processor, "do_center_crop", False)


@pytest.mark.parametrize("case", ["gelu", "bin", "fp16", "siglip", "timm_clip"])
def test_write_source_round_trip(case, tmp_path):
    make_folder(tmp_path / "src", **CASES[case])
    ckpt = open_clip_vision.read(tmp_path / "src")
    open_clip_vision.write_source(ckpt, tmp_path / "out")
    want, got = source_tensors(tmp_path / "src"), load_file(tmp_path / "out/open_clip_model.safetensors")
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    assert (tmp_path / "out/tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "out/open_clip_config.json").read_text()) == ckpt.source_config
    loaded = open_clip.create_model(f"local-dir:{tmp_path / 'out'}")  # strict load
    assert torch.equal(loaded.state_dict()["logit_scale"], want["logit_scale"].float())
    with pytest.raises(OutputExistsError):
        open_clip_vision.write_source(ckpt, tmp_path / "out")


def test_detect(tmp_path):
    make_folder(tmp_path / "src", VISION)
    assert open_clip_vision.detect(tmp_path / "src")
    assert not open_clip_vision.detect(tmp_path / "src/open_clip_model.safetensors")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf/config.json").write_text("{}")
    assert not open_clip_vision.detect(tmp_path / "hf")
    assert not open_clip_vision.detect(tmp_path / "missing")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_objects_is_refused(tmp_path):
    make_folder(tmp_path / "src", VISION, weights="open_clip_pytorch_model.bin")
    state = torch.load(tmp_path / "src/open_clip_pytorch_model.bin", weights_only=True)
    torch.save({**state, "logit_scale": Evil(tmp_path / "pwned")}, tmp_path / "src/open_clip_pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="open_clip_pytorch_model.bin"):
        open_clip_vision.read(tmp_path / "src")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("option", [
    {"attentional_pool": True}, {"ls_init_value": 0.1}, {"no_ln_pre": True}, {"pool_type": "avg"},
    {"output_tokens": True}, {"act_kwargs": {"approximate": "tanh"}}, {"qk_norm": True}, {"image_size": [32, 48]},
    {"layers": [1, 1, 1, 1]}, {"norm_kwargs": {"elementwise_affine": False}}, {"not_an_option": 1},
    {"timm_model_name": "resnet18", "timm_proj": "none"},
    {"timm_model_name": "mmmerge_test_siglip", "timm_pool": "map", "timm_proj": "linear"},
])
def test_unsupported_options_are_refused(option, tmp_path):
    make_folder(tmp_path / "src", VISION)
    config = json.loads((tmp_path / "src/open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"].update(option)
    (tmp_path / "src/open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError) as e:
        open_clip_vision.read(tmp_path / "src")
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / "src") in message
    assert any(k in message for k in option) or "resnet18" in message


@pytest.mark.parametrize("key, value", [("width", "32"), ("layers", "2"), ("mlp_ratio", None), ("head_width", 0),
                                        ("image_size", ["32", 32])])
def test_sizes_that_are_not_positive_numbers_are_one_line(key, value, tmp_path):
    from cli_run import one_line_error, run

    make_folder(tmp_path / "src", VISION)
    config = json.loads((tmp_path / "src/open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"][key] = value
    (tmp_path / "src/open_clip_config.json").write_text(json.dumps(config))
    one_line_error(run("convert", tmp_path / "src", "--out", tmp_path / "out"), str(tmp_path / "src/open_clip_config.json"),
                   f"vision_cfg {key} must be a positive number")
    assert not (tmp_path / "out").exists()


def test_timm_classifier_head_is_refused(tmp_path):
    make_folder(tmp_path / "src", **{**CASES["timm_clip"], "zero": ()})
    with pytest.raises(UnsupportedArchitectureError, match="visual.trunk.head"):
        open_clip_vision.read(tmp_path / "src")


def test_resize_mode_longest_is_refused(tmp_path):
    make_folder(tmp_path / "src", VISION, preprocess_cfg={"resize_mode": "longest"})
    with pytest.raises(UnsupportedArchitectureError, match="longest"):
        open_clip_vision.read(tmp_path / "src")


def test_broken_folders_name_the_file(tmp_path):
    src = tmp_path / "src"
    make_folder(src, VISION)
    config = (src / "open_clip_config.json").read_text()

    (src / "open_clip_config.json").write_text(config[:-5])
    with pytest.raises(UnreadableFileError, match="open_clip_config.json"):
        open_clip_vision.read(src)

    wrong = json.loads(config)
    wrong["model_cfg"]["vision_cfg"]["image_size"] = 48
    (src / "open_clip_config.json").write_text(json.dumps(wrong))
    with pytest.raises(ShapeMismatchError, match="visual.positional_embedding"):
        open_clip_vision.read(src)

    (src / "open_clip_config.json").write_text(config)
    (src / "open_clip_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UnreadableFileError, match="open_clip_model.safetensors"):
        open_clip_vision.read(src)

    (src / "open_clip_model.safetensors").unlink()
    with pytest.raises(UnreadableFileError, match="no open_clip weights"):
        open_clip_vision.read(src)
