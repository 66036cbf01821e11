"""Merges of every multimodal family, written in the family's own format, checked against the formula, the
transformers loader and (on the families mergekit 0.1.5 defines) mergekit itself."""

import json

import pytest
import torch
from safetensors.torch import load_file

import tiny_families as F
from mmmerge import merge
from mmmerge.adapters import open_checkpoint
from mmmerge.adapters.families import family_named, split_name
from mmmerge.adapters.hf_export import build_config, model_class
from mmmerge.errors import MMMergeError

ALL = sorted(F.CONFIGS)
# VLMs whose language model people merge with a text-only LLM of the same base (mergekit #618, #576, ...)
WITH_TEXT_ONLY = ["qwen2_5_vl", "mistral3", "gemma3", "llava_onevision", "llava_next", "qwen3_vl"]
TEXT_VOCAB = 150  # the text-only LLM lacks the VLM's image-token rows


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(model_type, seed) -> a saved tiny model folder with a chat template beside it."""
    made = {}

    def get(model_type, seed):
        if (model_type, seed) not in made:
            path = tmp_path_factory.mktemp(f"{model_type}-{seed}")
            F.save_tiny(model_type, path, seed=seed)
            (path / "chat_template.jinja").write_text(f"{{{{ messages }}}} {model_type}")
            made[model_type, seed] = path
        return made[model_type, seed]

    return get


def text_only(vlm, out, seed=7):
    """A text-only causal LM of the VLM's language architecture with its own weights and a smaller vocabulary."""
    lang = open_checkpoint(vlm).component("language")
    lang.config["vocab_size"] = TEXT_VOCAB
    torch.manual_seed(seed)
    model = model_class(lang.arch)._from_config(build_config(lang))
    model.save_pretrained(out)
    return out


def loads_strictly(model_type, folder):
    model, info = model_class(family_named(model_type).cls).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.state_dict()


@pytest.mark.parametrize("model_type", ALL)
def test_whole_checkpoints_merge_in_their_family(model_type, folders, tmp_path):
    a, b = folders(model_type, 0), folders(model_type, 1)
    out = merge({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 0.3}},
                                                      {"model": str(b), "parameters": {"weight": 0.7}}]},
                tmp_path / "out", quiet=True)
    assert json.loads((out / "config.json").read_text())["model_type"] == model_type
    assert (out / "chat_template.jinja").read_text().endswith(model_type)  # side files travel
    assert (out / "generation_config.json").is_file()
    got = loads_strictly(model_type, out)
    sa, sb = (loads_strictly(model_type, p) for p in (a, b))
    assert set(got) == set(sa)
    for k, v in got.items():
        torch.testing.assert_close(v, 0.3 * sa[k] + 0.7 * sb[k], rtol=0, atol=1e-6, msg=k)
    # the file layout is the one transformers saves, and every file tensor is written
    assert set(load_file(out / "model.safetensors")) == set(load_file(a / "model.safetensors"))


# mllama's language model has cross-attention layers: tested below, with a text-only Llama of its layers

@pytest.mark.parametrize("model_type,vlm_first", [(t, True) for t in ALL if t != "mllama"] +
                         [(t, False) for t in WITH_TEXT_ONLY])
def test_vlm_language_merges_with_a_text_only_llm(model_type, vlm_first, folders, tmp_path):
    vlm = folders(model_type, 0)
    llm = text_only(vlm, tmp_path / "llm")
    entries = [{"model": str(vlm), "parameters": {"weight": 0.5}}, {"model": str(llm), "parameters": {"weight": 0.5}}]
    out = merge({"merge_method": "linear", "models": entries if vlm_first else entries[::-1]}, tmp_path / "out",
                quiet=True)
    got, want = loads_strictly(model_type, out), loads_strictly(model_type, vlm)
    # the text-only model as transformers loads it: a Qwen3-MoE's per-expert file tensors fused as the class holds them
    text = model_class(open_checkpoint(vlm).component("language").arch).from_pretrained(llm).state_dict()
    merged_lang = open_checkpoint(out).component("language").tensors
    vlm_lang = open_checkpoint(vlm).component("language").tensors
    assert merged_lang.keys() == vlm_lang.keys()
    for name, t in merged_lang.items():
        mine, theirs = vlm_lang[name].load(), text[name]
        rows = min(mine.shape[0], theirs.shape[0])
        expect = mine.clone()
        expect[:rows] = 0.5 * mine[:rows] + 0.5 * theirs[:rows]  # shared rows merged, image-token rows kept
        torch.testing.assert_close(t.load(), expect, rtol=0, atol=1e-6, msg=name)
        assert mine.shape[0] == theirs.shape[0] or mine.shape[0] == F.TEXT["vocab_size"]
    vision_and_projector = {k for k in want if split_name(family_named(model_type), k)[0] != "language"}
    assert vision_and_projector and all(torch.equal(got[k], want[k]) for k in vision_and_projector)


@pytest.mark.parametrize("vlm_first", [True, False])
def test_mllama_language_merges_with_a_text_only_llama(vlm_first, folders, tmp_path):
    """Mllama's text layers are a Llama's with cross-attention layers inserted: text layer i is merged with the
    VLM's i-th layer that is not a cross-attention layer; the cross-attention layers and the embedding rows beyond
    the vocabulary (image tokens) are the VLM's."""
    import transformers

    vlm = folders("mllama", 0)
    config = json.loads((vlm / "config.json").read_text())["text_config"]
    cross = config["cross_attention_layers"]
    self_layers = [i for i in range(config["num_hidden_layers"]) if i not in cross]
    torch.manual_seed(7)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**F.TEXT, "num_hidden_layers": len(self_layers),
                                                              "tie_word_embeddings": False})).save_pretrained(tmp_path / "llm")
    entries = [{"model": str(vlm), "parameters": {"weight": 0.5}},
               {"model": str(tmp_path / "llm"), "parameters": {"weight": 0.5}}]
    out = merge({"merge_method": "linear", "models": entries if vlm_first else entries[::-1]}, tmp_path / "out",
                quiet=True)
    got, want = loads_strictly("mllama", out), loads_strictly("mllama", vlm)
    text = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llm").state_dict()
    prefix = "model.language_model."
    merged = set()
    for name, mine in want.items():
        if name == "lm_head.weight":
            text_name = name
        elif not name.startswith(prefix):
            assert torch.equal(got[name], mine), name  # vision tower and projector: the VLM's
            continue
        else:
            inner = name[len(prefix):]
            layer = int(inner.split(".")[1]) if inner.startswith("layers.") else None
            if layer in cross:
                assert torch.equal(got[name], mine), name  # a cross-attention layer: the VLM's
                continue
            text_name = "model." + (inner if layer is None else
                                    inner.replace(f"layers.{layer}.", f"layers.{self_layers.index(layer)}.", 1))
        theirs = text[text_name]
        merged.add(text_name)
        expect = mine.clone()
        expect[:theirs.shape[0]] = 0.5 * mine[:theirs.shape[0]] + 0.5 * theirs  # image-token rows kept
        torch.testing.assert_close(got[name], expect, rtol=0, atol=1e-6, msg=name)
    assert merged == set(text)  # every tensor of the text model is merged into one of the VLM's
    assert want[prefix + "embed_tokens.weight"].shape[0] > text["model.embed_tokens.weight"].shape[0]
    assert any(k.startswith(f"{prefix}layers.{cross[0]}.cross_attn.") for k in want)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**F.TEXT, "num_hidden_layers": len(self_layers) + 1})
                                  ).save_pretrained(tmp_path / "deeper")
    with pytest.raises(MMMergeError, match=f"has {len(self_layers) + 1} layers but .* {len(self_layers)} self-attention"):
        merge({"merge_method": "linear", "models": [entries[0], {"model": str(tmp_path / "deeper")}]},
              tmp_path / "refused", quiet=True)
    assert not (tmp_path / "refused").exists()


def test_components_recipe_names_the_output_family(folders, tmp_path):
    a, b = folders("qwen2_5_vl", 0), folders("qwen2_5_vl", 1)
    recipe = {"components": {"vision": {"source": str(b)}, "projector": {"source": str(b)},
                             "language": {"merge_method": "linear", "parameters": {"weight": 1.0},
                                          "models": [{"model": str(a)}, {"model": str(b)}]}},
              "output": {"format": "qwen2_5_vl"}}
    out = merge(recipe, tmp_path / "out", quiet=True)
    got, sa, sb = loads_strictly("qwen2_5_vl", out), loads_strictly("qwen2_5_vl", a), loads_strictly("qwen2_5_vl", b)
    for k, v in got.items():
        want = (sa[k] + sb[k]) / 2 if ".language_model." in k or k.startswith("lm_head") else sb[k]
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)
    with pytest.raises(MMMergeError, match="output format gemma3: no gemma3 checkpoint among the inputs"):
        merge({**recipe, "output": {"format": "gemma3"}}, tmp_path / "other", quiet=True)
    with pytest.raises(MMMergeError, match="unknown output format"):
        merge({**recipe, "output": {"format": "qwen9"}}, tmp_path / "other", quiet=True)


def test_mergekit_modules_section_is_a_components_recipe(folders, tmp_path):
    """mergekit's own multimodal form: one section per module; modules not named are copied from the base."""
    a, b = folders("gemma3", 0), folders("gemma3", 1)
    recipe = {"merge_method": "linear", "base_model": str(a), "parameters": {"weight": 0.5},
              "modules": {"text_decoder": {"models": [{"model": str(a)}, {"model": str(b), "parameters": {"weight": 1.5}}]}}}
    out = merge(recipe, tmp_path / "out", quiet=True)
    got, sa, sb = loads_strictly("gemma3", out), loads_strictly("gemma3", a), loads_strictly("gemma3", b)
    for k, v in got.items():
        want = (0.5 * sa[k] + 1.5 * sb[k]) / 2 if ".language_model." in k or k.startswith("lm_head") else sa[k]
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)
    with pytest.raises(MMMergeError, match="modules.audio_tower: unknown module"):
        merge({**recipe, "modules": {"audio_tower": {"models": [{"model": str(a)}]}}}, tmp_path / "x", quiet=True)


def hub_folder(model_type, seed, path):
    """A tiny model written in the layout its published checkpoints use (mergekit's definitions expect it)."""
    from mmmerge.adapters.hf_multimodal import family_tensors
    from mmmerge.io.writer import write_safetensors

    F.save_tiny(model_type, path.with_name(path.name + "-saved"), seed=seed)
    ckpt = open_checkpoint(path.with_name(path.name + "-saved"))
    path.mkdir()
    (path / "config.json").write_text((ckpt.path / "config.json").read_text())
    write_safetensors(path, family_tensors(ckpt.family, ckpt.components, "hub" if "hub" in ckpt.family.layouts else "saved"))
    return path


# the families mergekit 0.1.5 defines and runs on these tiny models (its qwen2_vl definition rejects the config,
# its qwen3_vl one expects three deepstack mergers)
MERGEKIT_FAMILIES = ["gemma3", "mistral3", "qwen2_5_vl"]


@pytest.mark.parametrize("model_type", MERGEKIT_FAMILIES)
@pytest.mark.parametrize("method", ["linear", "ties"])
def test_same_tensors_as_mergekit_and_nothing_dropped(model_type, method, tmp_path, monkeypatch):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base, a, b = (hub_folder(model_type, seed, tmp_path / name) for seed, name in ((0, "base"), (1, "a"), (2, "b")))
    cfg = {"merge_method": method, "models": [{"model": str(a), "parameters": {"weight": 0.3, "density": 0.5}},
                                               {"model": str(b), "parameters": {"weight": 0.7, "density": 0.5}}],
           "dtype": "float32"}
    if method == "linear":
        cfg["models"] = [{"model": m["model"], "parameters": {"weight": m["parameters"]["weight"]}} for m in cfg["models"]]
    else:
        cfg["base_model"] = str(base)
    run_merge(MergeConfiguration.model_validate(cfg), str(tmp_path / "mergekit"),
              options=MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    theirs = load_file(tmp_path / "mergekit" / "model.safetensors")
    ours = load_file(merge(cfg, tmp_path / "mmmerge", quiet=True) / "model.safetensors")
    assert set(ours) == set(load_file(a / "model.safetensors"))  # every input tensor is written
    assert set(theirs) <= set(ours)
    for k, v in theirs.items():
        torch.testing.assert_close(ours[k], v, rtol=0, atol=1e-6, msg=k)


LORA_TARGETS = r".*(language_model|text_model).*\.(q_proj|v_proj)|.*(vision_tower|visual|vision_model).*\.(fc2|qkv|o_proj)"


@pytest.mark.parametrize("model_type,legacy", [(t, False) for t in ALL] + [("qwen2_5_vl", True)])
def test_base_plus_lora_on_family_module_names_matches_peft(model_type, legacy, folders, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = folders(model_type, 0)
    cls = model_class(family_named(model_type).cls)
    torch.manual_seed(3)
    peft_model = get_peft_model(cls.from_pretrained(base), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                                      target_modules=LORA_TARGETS))
    peft_model.save_pretrained(tmp_path / "lora")
    theirs = PeftModel.from_pretrained(cls.from_pretrained(base), tmp_path / "lora").merge_and_unload().state_dict()
    if legacy:  # an adapter trained with transformers 4 names Qwen2.5-VL's modules as its files do
        f = tmp_path / "lora" / "adapter_model.safetensors"
        sd = {k.replace("model.model.language_model.", "model.model.").replace("model.model.visual.", "model.visual."): v
              for k, v in load_file(f).items()}
        assert any(k.startswith("base_model.model.visual.") for k in sd)
        from safetensors.torch import save_file
        save_file(sd, f, metadata={"format": "pt"})
    out = merge({"merge_method": "passthrough", "dtype": "float32", "models": [{"model": f"{base}+{tmp_path / 'lora'}"}]},
                tmp_path / "out", quiet=True)
    ours, plain = loads_strictly(model_type, out), loads_strictly(model_type, base)
    changed = {k for k in ours if not torch.equal(ours[k], plain[k])}
    assert any("language_model" in k or "text_model" in k for k in changed)
    assert any(k.startswith(("model.visual", "model.vision")) for k in changed)
    for k, v in ours.items():
        torch.testing.assert_close(v, theirs[k], rtol=0, atol=1e-5, msg=k)


@pytest.mark.parametrize("model_type,component", [(t, "language") for t in ALL] + [("qwen2_5_vl", "vision")])
def test_extracted_lora_applies_to_the_family_model_in_peft(model_type, component, folders, tmp_path):
    """`extract-lora --component` on two checkpoints of a family writes an adapter peft applies to the family's
    own class: at full rank it turns the base's linear layers of that component into the model's, and nothing
    outside the component (the projector inside Qwen's vision class included) changes."""
    from peft import PeftModel

    from mmmerge.lora.extract import extract_lora

    base, model = folders(model_type, 0), folders(model_type, 1)
    extract_lora(base, model, tmp_path / "lora", rank=64, component=component)
    cls = model_class(family_named(model_type).cls)
    adapted = PeftModel.from_pretrained(cls.from_pretrained(base), tmp_path / "lora").merge_and_unload().state_dict()
    sb, sm = loads_strictly(model_type, base), loads_strictly(model_type, model)
    changed = [k for k in adapted if not torch.equal(adapted[k], sb[k])]
    assert changed and all(split_name(family_named(model_type), k)[0] == component for k in changed)
    assert not any(k.startswith("model.visual.merger") for k in changed)
    for k in changed:
        torch.testing.assert_close(adapted[k], sm[k], rtol=0, atol=1e-5, msg=k)


@pytest.mark.parametrize("model_type", ALL)
def test_language_alone_is_a_text_only_llm(model_type, folders, tmp_path):
    """A `components:` recipe with only the language model writes the text-only class that holds it."""
    path = folders(model_type, 0)
    out = merge({"components": {"language": {"merge_method": "passthrough", "models": [{"model": str(path)}]}}},
                tmp_path / "out", quiet=True)
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    assert arch == open_checkpoint(path).component("language").arch and arch.endswith("ForCausalLM")
    lm, info = model_class(arch).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    full = model_class(family_named(model_type).cls).from_pretrained(path)
    ids = torch.tensor([[1, 5, 9, 17, 33, 65]])
    with torch.no_grad():
        want, got = full(input_ids=ids).logits, lm(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type,holds_projector", [("gemma3", False), ("mllama", False), ("qwen2_5_vl", True),
                                                         ("glm4v", True)])
def test_vision_alone_is_written_only_where_its_class_holds_exactly_it(model_type, holds_projector, folders, tmp_path):
    path = folders(model_type, 0)
    recipe = {"components": {"vision": {"merge_method": "passthrough", "models": [{"model": str(path)}]}}}
    if holds_projector:  # Qwen-style vision classes hold the projector too: a vision-only folder would lack it
        with pytest.raises(MMMergeError, match="class also holds tensor (merger|downsample)"):
            merge(recipe, tmp_path / "out", quiet=True)
        assert not (tmp_path / "out").exists()
        return
    out = merge(recipe, tmp_path / "out", quiet=True)
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    _, info = model_class(arch).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
