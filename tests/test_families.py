"""The family table, one test body per property, run over every row: nothing dropped, equal weights after
writing, every key layout read, and components that compute what the model's own parts compute. (Detection,
laziness, the exact round trip and strict loading are in test_adapter_contract.py, for every adapter.)

Each family is a tiny random model built from its own transformers config class and saved by transformers.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_families as F
from mmmerge.adapters import detect_adapter, hf_multimodal, open_checkpoint
from mmmerge.adapters.families import FAMILIES, family_named, join_name, rename
from mmmerge.adapters.hf_export import build_config, model_class
from mmmerge.io.writer import write_safetensors

ALL = sorted(F.CONFIGS)
HUB = sorted(t for t in ALL if "hub" in family_named(t).layouts)


def test_every_hand_written_row_has_a_tiny_model():
    assert set(FAMILIES) <= set(F.CONFIGS)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """model_type -> (folder written by save_pretrained, the model), built on first use."""
    made = {}

    def get(model_type):
        if model_type not in made:
            path = tmp_path_factory.mktemp(model_type)
            made[model_type] = (path, F.save_tiny(model_type, path))
        return made[model_type]

    return get


def loaded(cls_name, folder):
    cls = model_class(cls_name)
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    return model, info


@pytest.mark.parametrize("model_type", ALL)
def test_read_keeps_every_tensor(model_type, saved):
    path, model = saved(model_type)
    assert detect_adapter(path) is hf_multimodal
    ckpt = open_checkpoint(path)
    assert set(ckpt.components) == {"vision", "projector", "language"}
    assert all(c.tensors for c in ckpt.components.values())
    held = sum(c.num_params for c in ckpt.components.values()) + sum(t.numel for t in ckpt.outside.values())
    assert held == sum(t.numel() for t in load_file(path / "model.safetensors").values())
    assert ckpt.components["language"].arch.endswith("ForCausalLM")


@pytest.mark.parametrize("model_type", ALL)
def test_written_checkpoint_loads_strictly_with_equal_weights(model_type, saved, tmp_path):
    path, model = saved(model_type)
    ckpt = open_checkpoint(path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text((path / "config.json").read_text())
    write_safetensors(out, {**hf_multimodal.family_tensors(ckpt.family, ckpt.components), **ckpt.outside})
    again, info = loaded(family_named(model_type).cls, out)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ref = model.state_dict()
    for k, v in again.state_dict().items():
        assert torch.equal(v, ref[k]), k


@pytest.mark.parametrize("model_type", ALL)
def test_in_memory_names_are_read_too(model_type, saved, tmp_path):
    """A file holding the in-memory names (a raw state_dict save) reads to the same components."""
    path, model = saved(model_type)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" or
               "lm_head.weight" in {rename(n, family_named(model_type).layout("saved"), to_memory=True)
                                    for n in load_file(path / "model.safetensors")}},
              tmp_path / "model.safetensors")
    a, b = open_checkpoint(path), open_checkpoint(tmp_path)
    assert b.source_config["layout"] == "memory"
    for c in a.components:
        assert a.components[c].tensors.keys() == b.components[c].tensors.keys()
        for n, t in a.components[c].tensors.items():
            assert torch.equal(t.load(), b.components[c].tensors[n].load()), n


@pytest.mark.parametrize("model_type", HUB)
def test_hub_layout_is_one_transformers_loads(model_type, saved, tmp_path):
    """The row's hub layout (transformers 4 era names) is read, and transformers itself loads a file in that
    layout with no missing key and the same weights: the layout is one published checkpoints really use."""
    path, model = saved(model_type)
    family = family_named(model_type)
    ckpt = open_checkpoint(path)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text((path / "config.json").read_text())
    write_safetensors(hub, {**hf_multimodal.family_tensors(family, ckpt.components, "hub"), **ckpt.outside})
    names = load_file(hub / "model.safetensors").keys()
    assert any(n.startswith(("vision_tower.vision_model.", "visual.", "model.layers.")) for n in names)
    again = open_checkpoint(hub)
    assert again.source_config["layout"] == "hub"
    assert {c: sorted(x.tensors) for c, x in again.components.items()} == \
           {c: sorted(x.tensors) for c, x in ckpt.components.items()}
    reloaded, info = loaded(family.cls, hub)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in reloaded.state_dict().items())


def standalone(component, extra=None):
    """The component's own class, built from its config, holding its tensors (+ `extra`) strictly."""
    cls = model_class(component.arch)
    module = cls._from_config(build_config(component))
    state = {n: t.load() for n, t in component.tensors.items()}
    state.update(extra or {})
    result = module.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if component.config.get("tie_word_embeddings") else set()
    assert not result.unexpected_keys and set(result.missing_keys) <= tied, result
    if tied:
        module.tie_weights()
    return module.eval()


@pytest.mark.parametrize("model_type", ALL)
def test_vision_component_computes_the_models_own_tower(model_type, saved):
    path, model = saved(model_type)
    ckpt = open_checkpoint(path)
    family = ckpt.family
    vision_prefix = join_name(family, "vision", "x")[:-1]
    inside = {n: t.load() for n, t in ckpt.components["projector"].tensors.items()
              if join_name(family, "projector", n).startswith(vision_prefix)}  # projector held by the vision class
    tower = standalone(ckpt.components["vision"], inside)
    inputs = F.vision_inputs(model_type)
    with torch.no_grad():
        want = F.vision_module(model, model_type)(**inputs)
        got = tower(**inputs)
    want, got = (x[0] if isinstance(x, (tuple, list)) else getattr(x, "last_hidden_state", x) for x in (want, got))
    assert torch.equal(want, got)


@pytest.mark.parametrize("model_type", ALL)
def test_language_component_is_the_text_only_model(model_type, saved):
    """The language component loads strictly into its text-only class and computes the full model's logits
    on text."""
    _, model = saved(model_type)
    ckpt = open_checkpoint(saved(model_type)[0])
    lm = standalone(ckpt.components["language"])
    ids = torch.tensor([[1, 5, 9, 17, 33, 65]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = lm(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---- inspect and bad input, through the command a user runs ------------------------------------------------------

from cli_run import one_line_error, run  # noqa: E402


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "mllama", "gemma3"])
def test_inspect_shows_three_components(model_type, saved):
    path, _ = saved(model_type)
    r = run("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["format"] == f"transformers-{model_type}"
    assert set(s["components"]) == {"vision", "projector", "language"}
    ckpt = open_checkpoint(path)
    assert {c: v["parameters"] for c, v in s["components"].items()} == \
           {c: x.num_params for c, x in ckpt.components.items()}
    assert s["components"]["language"]["architecture"] == ckpt.components["language"].arch


def test_an_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen9_vl", "vision_config": {}}))
    one_line_error(run("inspect", tmp_path), str(tmp_path), "not a checkpoint")


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "llava"])
def test_tensors_that_do_not_fit_the_row_are_named(model_type, saved, tmp_path):
    path, _ = saved(model_type)
    tensors = load_file(path / "model.safetensors")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    victim = sorted(k for k in tensors if "layers.1." in k)[0]
    save_file({k: v for k, v in tensors.items() if k != victim}, tmp_path / "model.safetensors")
    one_line_error(run("inspect", tmp_path), f"tensor {victim} is missing")
    tensors[victim] = torch.zeros(3, 3)
    save_file(tensors, tmp_path / "model.safetensors")
    one_line_error(run("merge", "--dry-run", "--out", tmp_path / "o", write_recipe(tmp_path)),
                   f"tensor {victim} has shape (3, 3)")
    assert not (tmp_path / "o").exists()


def write_recipe(folder):
    recipe = folder.parent / f"{folder.name}.yml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {folder}\n    parameters: {{weight: 1.0}}\n")
    return recipe
