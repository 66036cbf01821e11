"""Tensors outside a VLM's components (gemma4's audio tower and its embedder) are merged by a plain recipe's method,
as mergekit merges every tensor of an architecture; one that some model lacks is copied from the reference and the
plan says which and why; a `components:` recipe, which names no method for them, copies them."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmmerge.engine import merge, plan_merge
from mergekit_oracle import mergekit_result

AUDIO = ("model.audio_tower.", "model.embed_audio.")
PARAMS = {"weight": 0.5, "density": 0.5}


def save_gemma4(path, seed: int, channels: list[int] | None = (8, 8)):
    """A tiny gemma4 with an audio tower whose subsampling convolutions have `channels` (None: no audio tower)."""
    import transformers as T

    from tiny_any_family import model_class, perturb_, tiny_config

    config = tiny_config("gemma4")
    if channels is not None:
        config.audio_config = T.Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                  output_proj_dims=32, subsampling_conv_channels=list(channels))
    torch.manual_seed(seed)
    perturb_(model_class("gemma4")._from_config(config), seed).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma4")
    return save_gemma4(root / "0", 0), save_gemma4(root / "1", 1)


def audio(tensors: dict) -> dict:
    return {k: v for k, v in tensors.items() if k.startswith(AUDIO)}


def recipe(method, a, b, weights=(0.3, 0.7)) -> dict:
    cfg = {"merge_method": method, "models": [{"model": str(m), "parameters": {**PARAMS, "weight": w}}
                                              for m, w in zip((a, b), weights)]}
    if method == "ties":
        cfg["base_model"] = str(a)
    return cfg


def mergekits(method, name, ta, tb, weights=(0.3, 0.7)):
    """mergekit's kernel on one tensor of the two models, as the recipe above lays them out."""
    if method == "ties":  # the base's own entry is not a model merged into it
        return mergekit_result("ties", [tb.float()], ta.float(), [{**PARAMS, "weight": weights[1]}], {})
    return mergekit_result("linear", [ta.float(), tb.float()], None, [{"weight": w} for w in weights], {})


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_audio_tower_is_merged_by_the_method(gemma4, tmp_path, method):
    from tiny_any_family import model_class

    a, b = gemma4
    cfg = recipe(method, a, b)
    plan = plan_merge(cfg)
    assert f"outside every component, merged by {method}: model.audio_tower.*, model.embed_audio.*" in plan.notes
    out = merge(cfg, tmp_path / "out", quiet=True)
    ta, tb, got = (load_file(m / "model.safetensors") for m in (a, b, out))
    assert audio(got) and audio(got).keys() == audio(ta).keys()
    finite = [k for k in audio(got) if torch.isfinite(ta[k]).all()]  # +-inf bounds: test_agreed_inf.py
    assert any(not torch.equal(ta[k], tb[k]) for k in finite)
    for k in finite:
        torch.testing.assert_close(got[k].float(), mergekits(method, k, ta[k], tb[k]), rtol=0, atol=1e-6, msg=k)
    model, info = model_class("gemma4").from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.parametrize("channels", [None, (8, 4)], ids=["no audio tower", "other conv widths"])
def test_outside_tensors_not_held_alike_are_copied_and_named(gemma4, tmp_path, channels):
    """Against a gemma4 with no audio tower, or one whose second subsampling convolution is narrower: the tensors
    the other model lacks or holds with another shape are the reference's, named in the plan; the rest merged."""
    from tiny_any_family import model_class

    a, _ = gemma4
    other = save_gemma4(tmp_path / "other", 1, channels)
    cfg = recipe("linear", a, other)
    plan = plan_merge(cfg)
    ta, tb = (load_file(m / "model.safetensors") for m in (a, other))
    unlike = [k for k in audio(ta) if k not in tb or tb[k].shape != ta[k].shape]
    alike = [k for k in audio(ta) if k not in unlike]
    assert unlike and (alike or channels is None)
    kept = [n for n in plan.notes if "not merged but copied" in n]
    assert len(kept) == 1, plan.notes
    if channels is None:  # every audio tensor, by module
        assert kept[0].endswith(f": model.audio_tower.*, model.embed_audio.* (missing in {other})"), kept[0]
    else:  # each narrower tensor by name, with both shapes
        assert all(f"{k} (shape {tuple(tb[k].shape)} in {other}, {tuple(ta[k].shape)} in {a})" in kept[0]
                   for k in unlike), kept[0]
        assert not any(k in kept[0] for k in alike)
        assert f"outside every component, merged by linear: every other one ({len(alike)} tensors)" in plan.notes
    out = merge(cfg, tmp_path / "out", quiet=True)
    got = load_file(out / "model.safetensors")
    assert all(torch.equal(got[k], ta[k]) for k in unlike)
    moved = [k for k in alike if torch.isfinite(ta[k]).all() and not torch.equal(ta[k], tb[k])]
    assert bool(moved) == bool(alike)
    for k in moved:
        torch.testing.assert_close(got[k].float(), mergekits("linear", k, ta[k], tb[k]), rtol=0, atol=1e-6, msg=k)
    model, info = model_class("gemma4").from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_a_components_recipe_copies_them_from_the_reference(gemma4, tmp_path):
    """A method per component: the audio tower is in no section, so it stays the reference's and the plan says so."""
    a, b = gemma4
    section = {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in (a, b)]}
    cfg = {"components": {c: section for c in ("vision", "projector", "language")}, "output": {"format": "family"}}
    plan = plan_merge(cfg)
    assert any(n.startswith(f"{a}: outside its components, copied") for n in plan.notes), plan.notes
    out = merge(cfg, tmp_path / "out", quiet=True)
    ta, got = (load_file(m / "model.safetensors") for m in (a, out))
    assert all(torch.equal(got[k], v) for k, v in audio(ta).items())


def test_outside_tensors_match_across_file_layouts(tmp_path):
    """Video-LLaVA's video tower lies outside its components. A hub checkpoint names it `video_tower.vision_model.*`,
    transformers 5 saves `video_tower.*`: the same tensors, merged (not copied as missing), written under the
    reference's names, whichever layout the reference has."""
    from tiny_any_family import perturb_, tiny_any

    from mmmerge.adapters.families import family_named, rename

    saved, hub = tmp_path / "saved", tmp_path / "hub"
    perturb_(tiny_any("video_llava"), 0).save_pretrained(saved)
    perturb_(tiny_any("video_llava"), 1).save_pretrained(hub)
    layouts = family_named("video_llava").layouts
    memory = {rename(k, layouts["saved"], to_memory=True): v for k, v in load_file(hub / "model.safetensors").items()}
    as_hub = {rename(k, layouts["hub"], to_memory=False): v for k, v in memory.items()}
    assert any(k.startswith("video_tower.vision_model.") for k in as_hub)
    save_file(as_hub, hub / "model.safetensors", metadata={"format": "pt"})
    video = {k: v for k, v in memory.items() if k.startswith("model.video_tower.")}
    mine = {rename(k, layouts["saved"], to_memory=True): v for k, v in load_file(saved / "model.safetensors").items()}
    for ref, other, layout in ((saved, hub, "saved"), (hub, saved, "hub")):
        cfg = recipe("linear", ref, other, weights=(0.5, 0.5))
        plan = plan_merge(cfg)
        assert not any("not merged but copied" in n for n in plan.notes), plan.notes
        merge(cfg, tmp_path / f"out-{layout}", quiet=True)
        out = load_file(tmp_path / f"out-{layout}" / "model.safetensors")
        for name, theirs in video.items():
            expected = ((mine[name].float() + theirs.float()) / 2).to(theirs.dtype)
            torch.testing.assert_close(out[rename(name, layouts[layout], to_memory=False)], expected, msg=name)
