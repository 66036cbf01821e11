"""peft LoRA on convolutions (nn.Conv1d, Conv2d, Conv3d), against peft itself (the oracle, float32, atol 1e-5).

A conv LoRA's lora_A is a convolution with the layer's kernel, (r, in, *kernel), and lora_B one of kernel 1,
(out, r, 1, ...); peft merges their product into the layer's weight. The tiny real modules: CLIP's patch embedding
(Conv2d 8x8) in a tower and inside a LLaVA, wav2vec2's feature extractor (Conv1d, with a bias for lora_bias),
ResNet's bottleneck (1x1 Conv2d: peft's matrix-product branch) and VideoMAE's tubelet embedding (Conv3d), the last
three read whole. `merge-loras` is checked against peft's `add_weighted_adapter` on a Conv2d, and on Conv1d and Conv3d
(whose updates peft's SVD does not reshape) against the weighted sum of peft's own deltas.
"""

import os
import shutil
import warnings

import pytest
import torch
import transformers
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from cli_run import one_line_error, run
from mmmerge.adapters import open_checkpoint
from mmmerge.adapters.hf_multimodal import family_tensors
from mmmerge.adapters.hf_whole import memory_names
from mmmerge.lora import open_with_lora
from mmmerge.lora.combine import merge_loras
from test_lora_apply import TOL, compare, make_adapter, peft_merged  # peft's adapter and merge, as oracle
from tiny import clip_vision_config, llava_config, max_diff, randomize

os.environ["HF_HUB_OFFLINE"] = "1"
CLIP_PATCH = "embeddings.patch_embedding"


def conv_layers(cls, base) -> dict[str, torch.nn.Module]:
    """{module name: module} of the model's convolutions, as peft names them."""
    return {n: m for n, m in cls.from_pretrained(base).named_modules()
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("lora_conv")


@pytest.fixture(scope="module")
def clip(root):
    base = root / "clip"
    randomize(transformers.CLIPVisionModel(clip_vision_config()), seed=4).save_pretrained(base)
    return base


@pytest.mark.parametrize("patterns", [False, True])
def test_clip_patch_embedding_conv2d_and_a_linear(root, clip, patterns):
    """The patch embedding (Conv2d, kernel 8) and q_proj; with rank_pattern/alpha_pattern and rsLoRA on the conv."""
    extra = {"rank_pattern": {"patch_embedding": 3}, "alpha_pattern": {"patch_embedding": 5}, "use_rslora": True} \
        if patterns else {}
    lora = make_adapter(transformers.CLIPVisionModel, clip, root / f"clip_lora_{patterns}", r=4, lora_alpha=8,
                        target_modules=["patch_embedding", "q_proj"], **extra)
    assert load_file(lora / "adapter_model.safetensors")[
        f"base_model.model.{CLIP_PATCH}.lora_A.weight"].shape == (3 if patterns else 4, 3, 8, 8)
    ours = {n: t.load() for n, t in open_with_lora(clip, lora).component("vision").tensors.items()}
    theirs = peft_merged(transformers.CLIPVisionModel, clip, lora)
    plain = {n: t.load() for n, t in open_checkpoint(clip).component("vision").tensors.items()}
    compare(ours, theirs, plain, [f"{CLIP_PATCH}.weight", "encoder.layers.1.self_attn.q_proj.weight"])


def test_llava_vision_patch_embedding_by_recipe(root, tmp_path):
    """`base+lora` in a recipe, LoRA on the LLaVA tower's patch embedding and the language model's q_proj: the
    written model equals peft's merge_and_unload."""
    base = root / "llava"
    randomize(transformers.LlavaForConditionalGeneration(llava_config()), seed=5).save_pretrained(base)
    cls = transformers.LlavaForConditionalGeneration
    lora = make_adapter(cls, base, root / "llava_lora", r=4, lora_alpha=6,
                        target_modules=r".*vision_tower.*patch_embedding|.*language_model.*q_proj")
    theirs = peft_merged(cls, base, lora)
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: passthrough\ndtype: float32\nmodels:\n  - model: {base}+{lora}\n")
    assert run("merge", recipe, "--out", tmp_path / "out", "--quiet").returncode == 0
    ckpt, plain = open_checkpoint(tmp_path / "out"), open_checkpoint(base)
    ours = {n: t.load() for n, t in family_tensors(ckpt.family, ckpt.components, "memory").items()}
    before = {n: t.load() for n, t in family_tensors(plain.family, plain.components, "memory").items()}
    compare(ours, theirs, before, [f"model.vision_tower.{CLIP_PATCH}.weight",
                                          "model.language_model.layers.0.self_attn.q_proj.weight"])


WHOLE = {  # model read whole: (class, config, target modules, which convolutions they are)
    "conv1d_with_lora_bias": (
        transformers.Wav2Vec2Model,
        dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
             conv_stride=(5, 2), conv_kernel=(10, 3), conv_bias=True, num_conv_pos_embeddings=4,
             num_conv_pos_embedding_groups=2, vocab_size=16),
        ["feature_extractor.conv_layers.0.conv", "feature_extractor.conv_layers.1.conv", "q_proj"],
        torch.nn.Conv1d),
    "conv2d_kernel_1": (
        transformers.ResNetModel,
        dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck"),
        ["encoder.stages.1.layers.0.shortcut.convolution", "encoder.stages.1.layers.0.layer.0.convolution",
         "encoder.stages.1.layers.0.layer.1.convolution"],
        torch.nn.Conv2d),
    "conv3d": (
        transformers.VideoMAEModel,
        dict(image_size=16, patch_size=8, num_frames=2, tubelet_size=2, hidden_size=32, num_hidden_layers=1,
             num_attention_heads=2, intermediate_size=32),
        ["embeddings.patch_embeddings.projection", "query"],
        torch.nn.Conv3d),
}


def whole_base(root, case):
    """The tiny model of WHOLE[case], saved once per module."""
    cls, config, _, _ = WHOLE[case]
    base = root / case
    if not base.exists():
        randomize(cls(cls.config_class(**config)), seed=6).save_pretrained(base)
    return base


@pytest.mark.parametrize("case", list(WHOLE))
def test_conv1d_kernel_1_and_conv3d_read_whole(root, case):
    cls, config, targets, kind = WHOLE[case]
    base = whole_base(root, case)
    convs = {n: m for n, m in conv_layers(cls, base).items() if n in targets}
    assert convs and all(type(m) is kind for m in convs.values()), convs
    if case == "conv2d_kernel_1":  # peft's matrix-product branch, next to a 3x3 kernel
        assert {m.kernel_size for m in convs.values()} == {(1, 1), (3, 3)}
    lora = make_adapter(cls, base, root / f"{case}_lora", r=4, lora_alpha=8, target_modules=targets,
                        lora_bias=case.endswith("lora_bias"))
    ckpt = open_with_lora(base, lora)
    names = memory_names(ckpt)  # file name -> in-memory (peft's) name
    ours = {names.get(n, n): t.load() for n, t in ckpt.component("model").tensors.items()}
    plain = {names.get(n, n): t.load() for n, t in open_checkpoint(base).component("model").tensors.items()}
    changed = [f"{n}.weight" for n in convs] + ([f"{n}.bias" for n in convs] if case.endswith("lora_bias") else [])
    compare(ours, peft_merged(cls, base, lora), plain, changed)


def peft_with(base, names, root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(transformers.CLIPVisionModel.from_pretrained(base), root / names[0],
                                          adapter_name=names[0])
        for n in names[1:]:
            model.load_adapter(root / n, adapter_name=n)
    return model


@pytest.mark.parametrize("method,kw", [("cat", {}), ("linear", {}), ("svd", {"rank": 3}), ("ties_svd",
                                                                                            {"density": 0.5})])
def test_merge_loras_on_a_conv2d_matches_add_weighted_adapter(root, clip, tmp_path, method, kw):
    for i, alpha in ((1, 8), (2, 4)):
        make_adapter(transformers.CLIPVisionModel, clip, tmp_path / f"c{i}", seed=10 + i, r=4, lora_alpha=alpha,
                     target_modules=["patch_embedding", "fc1"])
    weights = [0.7, -0.4] if method in ("cat", "linear") else [0.7, 0.4]
    merge_loras([tmp_path / "c1", tmp_path / "c2"], tmp_path / "ours", method=method, weights=weights,
                rank=kw.get("rank"), density=kw.get("density"))
    model = peft_with(clip, ["c1", "c2"], tmp_path)
    model.add_weighted_adapter(["c1", "c2"], weights, "theirs", combination_type=method, svd_rank=kw.get("rank"),
                               density=kw.get("density"))
    model.load_adapter(tmp_path / "ours", adapter_name="ours")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and "ours" in m.lora_A}
    patch = next(m for n, m in layers.items() if n.endswith("patch_embedding"))
    assert patch.lora_A["ours"].weight.dim() == 4 and len(layers) == 3
    for n, m in layers.items():
        theirs, ours = m.get_delta_weight("theirs"), m.get_delta_weight("ours")
        assert theirs.abs().max() > 1e-3, n
        assert max_diff(ours, theirs) <= TOL, (n, max_diff(ours, theirs))
    if method == "cat":  # exact: B A = sum w B_i A_i s_i, from the inputs themselves
        want = sum(w * patch.get_delta_weight(a) for a, w in zip(["c1", "c2"], weights))
        assert max_diff(patch.get_delta_weight("ours"), want) <= TOL


@pytest.mark.parametrize("case", ["conv1d_with_lora_bias", "conv3d"])
def test_merge_loras_svd_at_full_rank_is_the_weighted_sum_on_conv1d_and_conv3d(root, tmp_path, case):
    """peft's SVD reshapes Conv2d updates only; ours treats every convolution as its matrix, so at a rank that keeps
    every singular value the combined update is exactly sum w_i s_i B_i A_i, each term peft's own delta."""
    cls, _, targets, _ = WHOLE[case]
    base = whole_base(root, case)
    convs = [n for n in conv_layers(cls, base) if n in targets]
    for i, alpha in ((1, 8), (2, 4)):
        make_adapter(cls, base, tmp_path / f"w{i}", seed=20 + i, r=4, lora_alpha=alpha, target_modules=convs)
    weights = [0.7, -0.4]
    merge_loras([tmp_path / "w1", tmp_path / "w2"], tmp_path / "ours", method="svd", weights=weights, rank=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(cls.from_pretrained(base), tmp_path / "w1", adapter_name="w1")
        model.load_adapter(tmp_path / "w2", adapter_name="w2")
        model.load_adapter(tmp_path / "ours", adapter_name="ours")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and "ours" in m.lora_A}
    assert len(layers) == len(convs) and all(m.lora_A["ours"].weight.dim() > 2 for m in layers.values())
    for n, m in layers.items():
        want = sum(w * m.get_delta_weight(a) for a, w in zip(["w1", "w2"], weights))
        assert want.abs().max() > 1e-3, n
        assert max_diff(m.get_delta_weight("ours"), want) <= TOL, (n, max_diff(m.get_delta_weight("ours"), want))


def test_bad_conv_adapters_are_one_line(root, clip, tmp_path):
    """Factors whose ranks disagree, and a lora_B that is no 1-kernel convolution: one `error:` line naming the
    module, exit 2, nothing written."""
    lora = make_adapter(transformers.CLIPVisionModel, clip, root / "clip_bad_src", r=4,
                        target_modules=["patch_embedding"])
    key = f"base_model.model.{CLIP_PATCH}"
    for what, part, value, needle in (
            ("ranks", "lora_B.weight", torch.zeros(32, 2, 1, 1), "r=4"),
            ("kernel", "lora_B.weight", torch.zeros(32, 4, 3, 3), "Conv1d/2d/3d"),
            ("flat", "lora_B.weight", torch.zeros(32, 4), "Conv1d/2d/3d")):
        broken = tmp_path / what
        shutil.copytree(lora, broken)
        sd = load_file(broken / "adapter_model.safetensors")
        sd[f"{key}.{part}"] = value
        save_file(sd, broken / "adapter_model.safetensors")
        recipe = tmp_path / f"{what}.yml"
        recipe.write_text(f"merge_method: passthrough\nmodels:\n  - model: {clip}+{broken}\n")
        one_line_error(run("merge", recipe, "--out", tmp_path / "out", "--quiet"), CLIP_PATCH, needle)
        assert not (tmp_path / "out").exists()


def test_grouped_conv_lora_is_refused_like_peft(root, tmp_path):
    """A LoRA on a depthwise convolution (ConvNeXt's, groups > 1): peft refuses to merge it; so does `base+lora`, in
    one line naming the module."""
    base = root / "convnext"
    config = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])
    randomize(transformers.ConvNextModel(config), seed=7).save_pretrained(base)
    name = "encoder.stages.0.layers.0.dwconv"
    assert conv_layers(transformers.ConvNextModel, base)[name].groups > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that it cannot merge it
        lora = make_adapter(transformers.ConvNextModel, base, tmp_path / "lora", r=8, target_modules=[name])
        with pytest.raises(NotImplementedError):
            PeftModel.from_pretrained(transformers.ConvNextModel.from_pretrained(base), lora).merge_and_unload()
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: passthrough\nmodels:\n  - model: {base}+{lora}\n")
    one_line_error(run("merge", recipe, "--out", tmp_path / "out", "--quiet"), name, "grouped convolution")
    assert not (tmp_path / "out").exists()
