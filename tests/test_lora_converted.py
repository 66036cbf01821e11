"""A LoRA on modules transformers converts between memory and file (Kimi-K2.5's vision q/k/v held apart but saved as
one `wqkv` with q and k rope-permuted; MiniMax-M3-VL's shared gate_up_proj held fused but saved as gate and up; a
rope-permuted or transposed one-to-one): applied by `base+lora`, it equals peft's merge_and_unload on the same base,
and an adapter that does not fit is refused in one line."""

import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from cli_run import one_line_error, run
from mmmerge import merge
from tiny_any_family import model_class, perturb_, tiny_any

MODEL_TYPE = "kimi_k25"
LAYER = "model.vision_tower.layers.0.attn"
# One type per way transformers converts a Linear module between memory and file, with a module it converts.
CONVERTED = {
    "kimi_k25": [f"{LAYER}.q_proj", f"{LAYER}.v_proj"],  # three held apart, one file tensor: chunk + rope permutation
    "minimax_m3_vl": ["model.language_model.layers.0.mlp.shared_experts.gate_up_proj"],  # one held, two written
    "mistral_large4": ["model.vision_tower.transformer.layers.0.attention.k_proj"],  # one to one, rope-permuted
    "ovis2_5": ["model.multi_modal_projector.visual_embeddings_table"],  # one to one, transposed
}


def _base(model_type, folder):
    perturb_(tiny_any(model_type)).save_pretrained(folder)
    return folder


def _lora(base, model_type, targets, folder, *, bias):
    model = model_class(model_type).from_pretrained(base)
    torch.manual_seed(5)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, lora_bias=bias,
                                                  target_modules=targets))
    with torch.no_grad():  # lora_B.bias starts at zero; make it count
        for name, p in peft_model.named_parameters():
            if "lora_B" in name and name.endswith("bias"):
                p.normal_(0, 0.1)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return _base(MODEL_TYPE, tmp_path_factory.mktemp("kimi"))


@pytest.fixture(scope="module")
def lora(base, tmp_path_factory):
    """q_proj and v_proj of the first vision layer with lora_B biases (k_proj, between them in the fused tensor, is
    left alone)."""
    return _lora(base, MODEL_TYPE, CONVERTED[MODEL_TYPE], tmp_path_factory.mktemp("lora"), bias=True)


def _merged_as_peft_merges(model_type, base, lora, out):
    """The state dicts of `base+lora` merged by mmmerge and of peft's merge_and_unload, and the base's."""
    cls = model_class(model_type)
    theirs = PeftModel.from_pretrained(cls.from_pretrained(base), lora).merge_and_unload().state_dict()
    recipe = {"merge_method": "passthrough", "dtype": "float32", "models": [{"model": f"{base}+{lora}"}]}
    ours = cls.from_pretrained(merge(recipe, out, quiet=True)).state_dict()
    assert ours.keys() == theirs.keys()
    for k, v in ours.items():
        torch.testing.assert_close(v, theirs[k], rtol=0, atol=1e-5, msg=k)
    return ours, cls.from_pretrained(base).state_dict()


def test_fused_qkv_lora_with_bias_matches_merge_and_unload(base, lora, tmp_path):
    ours, plain = _merged_as_peft_merges(MODEL_TYPE, base, lora, tmp_path / "out")
    changed = {k for k in ours if not torch.equal(ours[k], plain[k])}
    assert {f"{LAYER}.{m}.{p}" for m in ("q_proj", "v_proj") for p in ("weight", "bias")} <= changed
    assert not any(".k_proj." in k for k in changed), changed


@pytest.mark.parametrize("model_type", [t for t in CONVERTED if t != MODEL_TYPE])
def test_other_converted_modules_match_merge_and_unload(model_type, tmp_path):
    base = _base(model_type, tmp_path / "base")
    lora = _lora(base, model_type, CONVERTED[model_type], tmp_path / "lora", bias=False)
    ours, plain = _merged_as_peft_merges(model_type, base, lora, tmp_path / "out")
    assert all(not torch.equal(ours[m + ".weight"], plain[m + ".weight"]) for m in CONVERTED[model_type])


def _edited(lora, tmp_path, edit):
    out = tmp_path / "edited"
    shutil.copytree(lora, out)
    tensors = load_file(out / "adapter_model.safetensors")
    save_file(edit(tensors), out / "adapter_model.safetensors")
    return out


def _refused(base, lora, tmp_path, *needles):
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: passthrough\nmodels:\n  - model: {base}+{lora}\n")
    one_line_error(run("merge", recipe, "--out", tmp_path / "out", "--quiet"), *needles)
    assert not (tmp_path / "out").exists()


def test_a_module_of_the_wrong_width_is_refused_in_one_line(base, lora, tmp_path):
    key = f"base_model.model.{LAYER}.q_proj.lora_A.weight"
    wide = _edited(lora, tmp_path, lambda t: {**t, key: torch.zeros(4, t[key].shape[1] + 8)})
    _refused(base, wide, tmp_path, f"{LAYER}.q_proj", "shape")


def test_a_module_the_model_lacks_is_refused_in_one_line(base, lora, tmp_path):
    def renamed(tensors):
        return {k.replace("attn.q_proj", "attn.x_proj"): v for k, v in tensors.items()}

    _refused(base, _edited(lora, tmp_path, renamed), tmp_path, f"{LAYER}.x_proj", "is not in")
