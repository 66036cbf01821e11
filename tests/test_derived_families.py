"""The contract over every image-text-to-text type transformers lists: each is read into components through a
family row (derived from transformers, or a hand-written override), or is listed below with the reason it is not;
each derived family that builds tiny merges whole (the output loads strictly in transformers and equals the mean),
and its language model merges with a text-only causal LM where transformers has one. One type per distinct
split (REPRESENTATIVE) also merges by a `components:` recipe and takes a peft LoRA exactly as peft's
merge_and_unload does; every type whose tower a LLaVA cannot hold is refused by `stitch` in one line.

A type transformers adds fails `test_every_type_is_derived_or_has_a_reason` until it derives or gets a reason.
Tiny models come from examples/tiny_any_family.py (no per-family code).
"""

import functools
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmmerge import merge
from mmmerge.adapters import detect_adapter, hf_multimodal, open_checkpoint
from mmmerge.adapters.derive import NotDerivable, derive_family, family_to_json
from mmmerge.adapters.families import FAMILIES, family_named, split_name
from mmmerge.adapters.hf_common import auto_class_names
from mmmerge.adapters.hf_export import build_config, model_class
from mmmerge.io.writer import write_safetensors
from tiny_any_family import tiny_any, tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

ALL_TYPES = sorted(auto_class_names("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"))

# Types whose class does not split into vision tower, projector and language model, and why.
NOT_SPLIT = {
    "fuyu": "no vision tower: image patches go straight into the language model's embeddings",
    "pi0": "an action policy (a VLM inside a flow-matching action expert), not an image-text-to-text VLM",
    "pi05": "an action policy (a VLM inside a flow-matching action expert), not an image-text-to-text VLM",
    "evolla": "a protein-text model: no vision config",
    "mistral4": "a text-only causal LM listed for image-text-to-text",
    "chameleon": "early fusion: images are VQ tokens of one vocabulary, no vision config",
    "emu3": "early fusion: images are VQ tokens of one vocabulary, no vision config",
    "blip": "a captioner: vision tower and text decoder with nothing between",
    "pix2struct": "an encoder-decoder: nothing between the encoder and the decoder",
    "t5gemma2": "an encoder-decoder: no text and vision configs",
    "udop": "an encoder-decoder: no text and vision configs",
    "vision-encoder-decoder": "an encoder-decoder: no text and vision configs",
    "diffusion_gemma": "its text encoder's weights are its decoder's (tied), which transformers writes once, under "
                       "the decoder's names, outside any component: a language model at the encoder's names would "
                       "read almost nothing (its default config, with num_experts None, does not build at all)",
}
# Derived types whose whole merge fails for a transformers reason, checked to still fail (strict xfail).
TRANSFORMERS_FAILS = {
    "shieldgemma2": "transformers does not load what its own save-time mapping writes (model.language_model.model.*)",
}
# Language merges with a text-only LM that fail, and why (strict xfail: a fix shows).
TEXT_ONLY_FAILS = {
    "apertus1p5": "its text type's causal LM (Apertus) writes its xIELU activations' beta and eps (4 tensors here), "
                  "which the VLM's language model does not write: mmmerge refuses the pair in one line",
    "hy_v4_vl": "HYV4ForCausalLM names its hyper-connection head's tensors hc_head.hc_pre.*, the VLM's language model "
                "hc_head.*: mmmerge refuses the pair in one line",
}

# Derived types the generic tiny builder cannot build (or transformers cannot save once built), and why.
NOT_TINY: dict[str, str] = {}
# Tiny models of more than a few million parameters: marked slow.
HEAVY = {"fast_vlm", "janus", "muse_spark", "muse_glimmer", "llama4", "deepseek_vl_hybrid", "cohere2_vision",
         "pp_formulanet", "unlimited_ocr"}


@functools.cache
def contract_family(model_type):
    """The row the contract proves: derived from the default config, else, where that does not build or split, from
    the tiny checkpoint's config, as mmmerge reads any checkpoint by its config.json (qwen4_exp's default config
    leaves its indexer's sizes None; cut to two layers, the tiny one builds no indexer)."""
    family = family_named(model_type)
    if family is None:
        try:
            config = tiny_config(model_type).to_dict()
        except Exception:  # noqa: BLE001  (a config that does not shrink derives nothing)
            return None
        family = family_named(model_type, config)
    return family


def _derivable(model_type):
    return contract_family(model_type) is not None


def test_every_type_is_derived_or_has_a_reason():
    """Each type transformers lists reads into components, or is listed in NOT_SPLIT with its reason; and no
    listed type derives (a stale reason fails too)."""
    unexplained = [t for t in ALL_TYPES if t not in NOT_SPLIT and not _derivable(t)]
    assert not unexplained, {t: str(_why(t)) for t in unexplained}
    stale = [t for t in NOT_SPLIT if t in ALL_TYPES and _derivable(t)]
    assert not stale


def test_the_tables_name_derived_types_only(tmp_path):
    """NOT_TINY, HEAVY and the failure tables name types that derive (else their entry is stale), and a type listed
    as not building tiny really does not build."""
    derived = {t for t in ALL_TYPES if t not in NOT_SPLIT}
    assert set(NOT_TINY) | HEAVY | set(TRANSFORMERS_FAILS) | set(TEXT_ONLY_FAILS) | set(COMPONENTS_FAILS) | \
        set(LORA_FAILS) | set(HELD_BUT_FAILS) | set(REFUSED_BUT_RUNS) <= derived
    for model_type in NOT_TINY:
        with pytest.raises(Exception):
            tiny_any(model_type).save_pretrained(tmp_path)


def _why(model_type):
    try:
        derive_family(model_type)
    except NotDerivable as e:
        return e


def test_each_hand_written_row_differs_from_its_derivation():
    """A hand row is an override: the derivation gives something else for it (or nothing), else it is deleted."""
    for model_type, row in FAMILIES.items():
        try:
            derived = derive_family(model_type)
        except NotDerivable:
            continue
        assert _meaning(derived) != _meaning(row), f"{model_type}: the derivation reproduces the hand row"


def _meaning(family):
    """What a row says, in an order-free form; renamings of prefixes the class does not hold are left out by
    comparing only the renamings both rows agree a class would use."""
    d = family_to_json(family)
    d["parts"] = sorted(map(tuple, d["parts"]))
    memory = {p for _, p, _ in family.parts}
    d["layouts"] = {k: sorted(tuple(p) for p in v if p[0] != p[1] and any(m.startswith(p[1]) for m in memory))
                    for k, v in d["layouts"].items()}
    return json.dumps(d, sort_keys=True)


@pytest.mark.parametrize("model_type", ["idefics2", "llava_next_video", "vipllava", "llama4",
                                        "cohere2_vision", "lfm2_vl", "janus", "deepseek_vl", "qwen3_5"])
def test_new_families_are_derived(model_type):
    family = family_named(model_type)
    assert family is not None and model_type not in FAMILIES
    assert {c for c, _, _ in family.parts} == {"vision", "projector", "language"}


def test_a_vision_config_the_default_leaves_out_derives_from_a_checkpoints_config(tmp_path):
    """gemma4's default config leaves its optional vision config None (no row from default values); a checkpoint's
    config.json holds one. From a full-size config with the vision sub-config's defaults, as save_pretrained writes
    it, the folder's row is the contract's (derived from the tiny config), and its vision prefix is the submodule
    transformers builds from that vision config."""
    import transformers as T

    from mmmerge.adapters.families import family_of
    from mmmerge.adapters.hf_common import read_config
    from tiny_any_family import with_default_vision

    model_type = "gemma4"
    assert T.AutoConfig.for_model(model_type).vision_config is None
    with pytest.raises(NotDerivable):
        derive_family(model_type)
    config = with_default_vision(T.AutoConfig.for_model(model_type))
    config.save_pretrained(tmp_path)
    family = family_of(read_config(tmp_path))
    assert family is not None and family == contract_family(model_type)
    with torch.device("meta"):
        model = model_class(family.cls)._from_config(config)
    tower = model.get_submodule(next(p for c, p, _ in family.parts if c == "vision").rstrip("."))
    assert tower.config.model_type == config.vision_config.model_type


def test_a_tower_that_writes_the_language_width_is_read_with_no_projector():
    """Inkling's vision tower ends in a linear layer that writes the language model's width: its row has no projector
    part, the tower and the language model are the modules transformers builds from their configs, and the audio
    tower is kept outside. Against transformers: built with another text width, the tower's last linear layer writes
    that width. BLIP's tower and text decoder have one width by default (768), but the tower's does not follow the
    text config's: BLIP stays unsplit."""
    import transformers as T

    family = contract_family("inkling_mm_model")
    assert [p for p in family.parts if p[0] == "projector"] == []
    assert {p for c, p, _ in family.parts if c != "language"} == {"model.vision_tower."}
    assert set(family.outside) == {"model.audio_tower."}
    config = tiny_config("inkling_mm_model").to_dict()
    config["text_config"]["hidden_size"] = 48
    with torch.device("meta"):
        model = model_class(family.cls)._from_config(T.InklingConfig.from_dict(config))
    tower = model.get_submodule("model.vision_tower")
    assert [m for m in tower.modules() if isinstance(m, torch.nn.Linear)][-1].out_features == 48
    assert model.get_submodule("model.language_model").config.hidden_size == 48
    blip = T.BlipConfig()
    assert blip.vision_config.hidden_size == blip.text_config.hidden_size
    with pytest.raises(NotDerivable, match="nothing between"):
        derive_family("blip")


def test_an_audio_embedder_beside_the_image_projector_is_kept_outside():
    """A gemma4 checkpoint with an audio tower too (as Gemma 4's small models have): `embed_audio` is kept outside
    with the audio tower, and the projector is the row's without audio. Independently, from transformers: the
    embedder's size follows the audio config's output width, not the vision config's width."""
    import copy

    import transformers as T

    from tiny_any_family import with_default_vision

    config = with_default_vision(T.AutoConfig.for_model("gemma4"))
    config.audio_config = T.Gemma4AudioConfig()
    family = derive_family("gemma4", config.to_dict())
    assert {"model.audio_tower.", "model.embed_audio."} <= set(family.outside)
    assert [p for p in family.parts if p[0] == "projector"] == \
        [p for p in contract_family("gemma4").parts if p[0] == "projector"]

    def embedder_size(cfg):
        with torch.device("meta"):
            model = model_class(family.cls)._from_config(cfg)
        return sum(p.numel() for p in model.get_submodule("model.embed_audio").parameters())

    wider_audio, wider_vision = copy.deepcopy(config), copy.deepcopy(config)
    wider_audio.audio_config.output_proj_dims *= 2
    wider_vision.vision_config.hidden_size *= 2
    assert embedder_size(wider_audio) != embedder_size(config) == embedder_size(wider_vision)


def test_an_encoder_free_embedder_is_the_tower_and_its_output_projection_the_projector(tmp_path):
    """gemma4_unified has no vision model class: transformers builds `model.embed_vision`, a plain module, from the
    vision and the text config. Its row reads that module as the vision tower, its `multimodal_embedder` as the
    projector and the language model as Gemma4UnifiedForCausalLM's; the full-size config (embedder and text widths
    apart) gives the row the tiny one (both 32) gives, with an audio embedder too (kept outside). Against
    transformers: built with another text width, the projector's linear layer writes it and the tower's reads the raw
    patches and writes the embedder's width; the saved file names keep the two apart (`vision_embedder.*`,
    `embed_vision.embedding_projection.*`)."""
    import copy

    import transformers as T

    from tiny_any_family import with_default_vision

    model_type = "gemma4_unified"
    family = contract_family(model_type)
    full = with_default_vision(T.AutoConfig.for_model(model_type))
    assert full.vision_config.mm_embed_dim != full.text_config.hidden_size
    assert derive_family(model_type, full.to_dict()) == family
    full.audio_config = T.Gemma4UnifiedAudioConfig()  # its audio embedder is no tower: kept outside, as gemma4's
    with_audio = derive_family(model_type, full.to_dict())
    assert (with_audio.parts, set(with_audio.outside)) == (family.parts, {"model.embed_audio."})
    parts = {c: [p for k, p, _ in family.parts if k == c] for c in ("vision", "projector", "language")}
    assert parts == {"vision": ["model.embed_vision."], "projector": ["model.embed_vision.multimodal_embedder."],
                     "language": ["model.language_model.", "lm_head."]}
    assert family.language_type is None and family.language_arch is None
    config = copy.deepcopy(tiny_config(model_type))
    causal = auto_class_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES")[config.text_config.model_type]
    assert causal == "Gemma4UnifiedForCausalLM"
    config.text_config.hidden_size = 48
    with torch.device("meta"):
        model = model_class(family.cls)._from_config(config)

    def linears(component):
        return [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                and _component_of(model_type, n + ".weight") == component]

    vision = config.vision_config
    assert [(m.in_features, m.out_features) for m in linears("projector")] == [(vision.output_proj_dims, 48)]
    assert [(m.in_features, m.out_features) for m in linears("vision")] == \
        [(vision.model_patch_size ** 2 * 3, vision.mm_embed_dim)]
    tiny_any(model_type).save_pretrained(tmp_path)
    ckpt = open_checkpoint(tmp_path)
    files = load_file(tmp_path / "model.safetensors")
    projected = {n for n in files if n.startswith("model.embed_vision.")}
    assert projected == {"model.embed_vision.embedding_projection.weight"}
    assert len(ckpt.component("vision").tensors) == len([n for n in files if n.startswith("model.vision_embedder.")])
    assert list(ckpt.component("projector").tensors) == ["multimodal_embedder.embedding_projection.weight"]


TOP_LEVEL_TYPES = ["idefics", "git"]  # configs that configure the decoder at their top level (no text config)


@pytest.mark.parametrize("model_type", TOP_LEVEL_TYPES)
def test_a_decoder_configured_at_the_top_level_is_split_around_the_tower(model_type, saved):
    """IDEFICS and GIT configure the decoder at the top level: the row says so (no class holds the language model
    alone, so the class itself stands for it). Against transformers: the vision prefix is the module built from the
    vision config; with a vision width apart from the decoder's, every projector part holds a linear layer that
    reads the vision width and no language part does; the head and the token embeddings it is tied to
    (`_tied_weights_keys`) are both the language model's; and inspect shows the three components."""
    import copy

    from cli_run import run
    from mmmerge.adapters.families import TOP_LEVEL

    family = contract_family(model_type)
    assert (family.text_config, family.language_type, family.language_arch) == (TOP_LEVEL, None, family.cls)
    config = copy.deepcopy(tiny_config(model_type))
    width = "embed_dim" if hasattr(config.vision_config, "embed_dim") else "hidden_size"
    setattr(config.vision_config, width, 48)
    cls = model_class(family.cls)
    with torch.device("meta"):
        model = cls._from_config(config)
    prefixes = {c: [p for k, p, _ in family.parts if k == c] for c in ("vision", "projector", "language")}
    assert model.get_submodule(prefixes["vision"][0].rstrip(".")).config.model_type == config.vision_config.model_type

    def reads_vision(prefix):
        module = model.get_submodule(prefix.rstrip("."))
        return any(isinstance(m, torch.nn.Linear) and m.in_features == 48 for m in module.modules())

    assert all(reads_vision(p) for p in prefixes["projector"] if p.rstrip(".") in dict(model.named_modules()))
    assert not any(reads_vision(p) for p in prefixes["language"])
    assert all(_component_of(model_type, n) == "language" for pair in cls._tied_weights_keys.items() for n in pair)
    r = run("inspect", saved(model_type), "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["components"]) == {"vision", "projector", "language"}


def test_idefics_language_is_the_llama_it_starts_from_and_its_perceiver_the_projector(tmp_path):
    """IDEFICS' decoder is a LLaMA: its language component holds exactly the names and shapes of a LlamaForCausalLM
    of the config's sizes (transformers' class, built independently). A checkpoint with the perceiver resampler
    (as idefics-9b and -80b have; the default config leaves it out) reads it into the projector, nothing outside."""
    import transformers as T

    config = tiny_config("idefics")
    config.use_resampler = True
    model = model_class("IdeficsForVisionText2Text")(config)
    model.save_pretrained(tmp_path)
    ckpt = open_checkpoint(tmp_path)
    llama = T.LlamaConfig(**{k: getattr(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                              "num_hidden_layers", "num_attention_heads",
                                                              "rms_norm_eps")})
    with torch.device("meta"):
        want = {n: tuple(t.shape) for n, t in T.LlamaForCausalLM(llama).state_dict().items()}
    assert {n: tuple(t.shape) for n, t in ckpt.component("language").tensors.items()} == want
    assert any(n.startswith("perceiver_resampler.") for n in ckpt.component("projector").tensors)
    assert not ckpt.outside


@pytest.mark.parametrize("model_type", TOP_LEVEL_TYPES)
def test_a_language_model_no_class_holds_alone_refuses_a_text_only_lm_in_one_line(model_type, saved, tmp_path):
    """Merged with a text-only LLM (a LlamaForCausalLM of the decoder's sizes, whose names IDEFICS' decoder shares),
    in either order, the merge stops with one line that says transformers has no causal LM holding this language
    model alone, and writes nothing."""
    import transformers as T

    from cli_run import one_line_error, run

    vlm = saved(model_type)
    config = tiny_config(model_type)
    T.LlamaForCausalLM(T.LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                                     intermediate_size=config.intermediate_size, num_attention_heads=4,
                                     num_hidden_layers=config.num_hidden_layers)).save_pretrained(tmp_path / "llm")
    for first, second in ((vlm, tmp_path / "llm"), (tmp_path / "llm", vlm)):
        recipe = tmp_path / "recipe.json"
        models = [{"model": str(m), "parameters": {"weight": 0.5}} for m in (first, second)]
        recipe.write_text(json.dumps({"merge_method": "linear", "models": models}))
        r = run("merge", recipe, "--out", tmp_path / "out", "--quiet")
        one_line_error(r, "no causal LM holding this language model alone", str(vlm))
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("component,said", [("vision", "IdeficsVisionTransformer is no transformers model class"),
                                             ("language", "class also holds tensor model.vision_model.")])
def test_an_idefics_component_no_class_holds_alone_is_refused_in_one_line(component, said, saved, tmp_path):
    """IDEFICS' vision tower is a plain module of transformers (no model class, no config of its own), and its
    language model has no class without the tower: either written alone stops with one line, and writes nothing."""
    import transformers as T

    from cli_run import one_line_error, run

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"components": {component: {"source": str(saved("idefics"))}}}))
    r = run("merge", recipe, "--out", tmp_path / "out", "--quiet")
    one_line_error(r, said)
    assert not (tmp_path / "out").exists()
    assert not issubclass(T.models.idefics.modeling_idefics.IdeficsVisionTransformer, T.PreTrainedModel)


def test_inspect_reads_a_derived_family(saved):
    """Through the command a user runs: a family no hand row names shows its three components."""
    from cli_run import run

    r = run("inspect", saved("idefics2"), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["format"] == "transformers-idefics2" and set(s["components"]) == {"vision", "projector", "language"}
    assert s["components"]["language"]["architecture"] == "MistralForCausalLM"


# ---- every derived type that builds tiny ---------------------------------------------------------------------

TINY = [t for t in ALL_TYPES if t not in NOT_SPLIT and t not in NOT_TINY]
PARAMS = [pytest.param(t, marks=pytest.mark.slow) if t in HEAVY else
          pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=TRANSFORMERS_FAILS[t]))
          if t in TRANSFORMERS_FAILS else t for t in TINY]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model_type, seed) -> a folder written by save_pretrained of a random tiny model."""
    made = {}

    def get(model_type, seed=0):
        if (model_type, seed) not in made:
            path = tmp_path_factory.mktemp(f"{model_type}-{seed}")
            model = tiny_any(model_type, seed=seed)
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
            model.save_pretrained(path)
            made[model_type, seed] = path
        return made[model_type, seed]

    return get


@pytest.mark.parametrize("model_type", PARAMS)
def test_reads_into_components_and_merges_whole(model_type, saved, tmp_path):
    a, b = saved(model_type, 0), saved(model_type, 1)
    assert detect_adapter(a) is hf_multimodal
    ckpt = open_checkpoint(a)
    named = {c for c, _, _ in ckpt.family.parts}  # no projector where the tower writes the language width (inkling)
    assert {c for c, comp in ckpt.components.items() if comp.tensors} == named >= {"vision", "language"}
    files_a, files_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    held = sum(c.num_params for c in ckpt.components.values()) + sum(t.numel for t in ckpt.outside.values())
    assert held == sum(t.numel() for t in files_a.values())
    out = merge({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                                                      {"model": str(b), "parameters": {"weight": 0.5}}]},
                tmp_path / "out", quiet=True)
    model, info = model_class(ckpt.family.cls).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    got = load_file(out / "model.safetensors")
    assert got.keys() == files_a.keys()
    for k, v in got.items():  # tensors outside every component (audio, video towers) too: the recipe merges all
        want = (0.5 * files_a[k].double() + 0.5 * files_b[k].double()).to(v.dtype)
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)


# (tensors outside the components are written as read, in the saved layout: only families without them)
WITH_HUB = [t for t in TINY if t not in HEAVY and t not in TRANSFORMERS_FAILS and "hub" in contract_family(t).layouts
            and not contract_family(t).outside]


@pytest.mark.parametrize("model_type", WITH_HUB)
def test_derived_hub_layout_is_one_transformers_loads(model_type, saved, tmp_path):
    """A derived `hub` layout (the legacy prefixes transformers' load-time mapping removes) is read back, and
    transformers loads a file in it with no missing key and the same weights."""
    path = saved(model_type)
    ckpt = open_checkpoint(path)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text((path / "config.json").read_text())
    write_safetensors(hub, {**hf_multimodal.family_tensors(ckpt.family, ckpt.components, "hub"), **ckpt.outside})
    assert open_checkpoint(hub).source_config["layout"] == "hub"
    assert load_file(hub / "model.safetensors").keys() != load_file(path / "model.safetensors").keys()
    cls = model_class(ckpt.family.cls)
    model, info = cls.from_pretrained(hub, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    want = cls.from_pretrained(path).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


WITH_TEXT_ONLY = [t for t in TINY
                  if t not in HEAVY and t not in TRANSFORMERS_FAILS and contract_family(t).language_arch is None]
# Types whose VLM transformers saves under other language names than the text-only class: merged text-only first too
# (the output is still the VLM's family, in its names)
NAMED_APART = ["kimi_k25", "cosmos3_omni", "qianfan_ocr", "minimax_m3_vl", "nemotron_h_omni", "inkling_mm_model"]
# Types merged text-only first too, and whose language model is written alone, for their users' own case too: a Gemma 4
# text fine-tune (Gemma4UnifiedForCausalLM) listed before the Unified VLM whose language model it shares.
TEXT_ONLY_FIRST = [*NAMED_APART, "gemma4_unified"]


@pytest.mark.parametrize("model_type,vlm_first", [
    pytest.param(t, True, marks=pytest.mark.xfail(strict=True, reason=TEXT_ONLY_FAILS[t])) if t in TEXT_ONLY_FAILS
    else (t, True) for t in WITH_TEXT_ONLY] + [(t, False) for t in TEXT_ONLY_FIRST])
def test_language_merges_with_a_text_only_causal_lm(model_type, vlm_first, saved, tmp_path):
    """The VLM's language model merges with a text-only *ForCausalLM built from its language component's config,
    where transformers saves the two under other names too: the output loads strictly in the VLM's class, its
    language model is the mean of the two as transformers loads them (in memory the VLM's language submodule and
    the text-only class's base model are one class), its vision tower, projector and other tensors are the VLM's."""
    vlm = saved(model_type)
    lang = open_checkpoint(vlm).component("language")
    torch.manual_seed(7)
    model_class(lang.arch)._from_config(build_config(lang)).save_pretrained(tmp_path / "llm")
    entries = [{"model": str(vlm), "parameters": {"weight": 0.5}},
               {"model": str(tmp_path / "llm"), "parameters": {"weight": 0.5}}]
    out = merge({"merge_method": "linear", "models": entries if vlm_first else entries[::-1]}, tmp_path / "out",
                quiet=True)
    family = contract_family(model_type)
    cls = model_class(family.cls)
    merged, info = cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert open_checkpoint(out).component("language").tensors  # mmmerge reads its own output back
    mine = cls.from_pretrained(vlm).state_dict()
    text = model_class(lang.arch).from_pretrained(tmp_path / "llm").state_dict()
    for name, t in merged.state_dict().items():
        where = split_name(family, name)
        if where is not None and where[0] == "language":
            torch.testing.assert_close(t, 0.5 * mine[name] + 0.5 * text[where[1]], rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(t, mine[name]), name


@pytest.mark.parametrize("model_type", TEXT_ONLY_FIRST)
def test_language_alone_is_its_text_only_class(model_type, saved, tmp_path):
    """A `components:` recipe with only the language model writes the text-only class, which loads it strictly with
    the VLM's language weights as transformers loads them, though the VLM's files name them otherwise."""
    vlm = saved(model_type)
    out = merge({"components": {"language": {"merge_method": "passthrough", "models": [{"model": str(vlm)}]}}},
                tmp_path / "out", quiet=True)
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    lm, info = model_class(arch).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    family = contract_family(model_type)
    want = {split_name(family, k)[1]: v for k, v in model_class(family.cls).from_pretrained(vlm).state_dict().items()
            if (split_name(family, k) or ("",))[0] == "language"}
    got = lm.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got)


def test_readme_family_list_is_the_contracts():
    """The README's family table and its "N image-text-to-text families" figures are what
    scripts/families_table.py makes from this file's tables and the derivation (run it with `update` to fix)."""
    import families_table

    readme = families_table.README.read_text()
    assert readme == families_table.render(readme)
    assert families_table.COUNT.search(readme)


# ---- components recipe, LoRA and stitch on derived families (#24 item 3) ----------------------------------------

def _loads_strictly(model_type, folder):
    model, info = model_class(contract_family(model_type).cls).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.state_dict()


def _component_of(model_type, memory_name):
    part = split_name(contract_family(model_type), memory_name)
    return part and part[0]


# Components recipes that fail, and why (strict xfail: a fix shows).
COMPONENTS_FAILS: dict[str, str] = {}


def _one_per_split(types):
    """One type for each distinct way a class splits into components (the same part prefixes and outside
    tensors), a derived one before a hand-written row (tests/test_family_merges.py covers those): the components
    and LoRA checks cost about a second a type, and types that split alike exercise the same renamings."""
    chosen = {}
    for t in sorted(types, key=lambda t: t in FAMILIES):
        family = contract_family(t)
        chosen.setdefault((tuple(sorted(family.parts)), tuple(sorted(family.outside))), t)
    return sorted(chosen.values())


REPRESENTATIVE = _one_per_split(t for t in TINY if t not in HEAVY and t not in TRANSFORMERS_FAILS)
WITH_COMPONENTS = [pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=COMPONENTS_FAILS[t]))
                   if t in COMPONENTS_FAILS else t for t in REPRESENTATIVE]


@pytest.mark.parametrize("model_type", WITH_COMPONENTS)
def test_components_recipe_vision_from_one_language_merged(model_type, saved, tmp_path):
    """`components:` with vision and projector copied from one model and the language models merged, written in
    the family's format: transformers loads it strictly, the language tensors are the mean, the rest the source's."""
    a, b = saved(model_type, 0), saved(model_type, 1)
    recipe = {"components": {"vision": {"source": str(b)}, "projector": {"source": str(b)},
                             "language": {"merge_method": "linear", "parameters": {"weight": 1.0},
                                          "models": [{"model": str(a)}, {"model": str(b)}]}},
              "output": {"format": model_type}}
    out = merge(recipe, tmp_path / "out", quiet=True)
    got, sa, sb = (_loads_strictly(model_type, f) for f in (out, a, b))
    assert got.keys() == sa.keys()
    for k, v in got.items():
        want = (sa[k] + sb[k]) / 2 if _component_of(model_type, k) == "language" else sb[k]
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(sa[k], sb[k]) and _component_of(model_type, k) == "vision" for k in got)


def test_a_family_without_a_projector_leaves_it_out_of_components(saved, lm, tmp_path):
    """inkling_mm_model has no projector: a `components:` recipe that leaves it out writes the family (transformers
    loads it strictly: language the mean, the rest the source's), as one that names a source of it does; a LLaVA's
    projector has no place in it, a LLaVA needs its own named, and the empty projector is no folder of its own: each
    refused in one line, nothing written. Stitch takes no projector from it either; inspect shows it empty."""
    from cli_run import one_line_error, run

    model_type = "inkling_mm_model"
    a, b, llava = saved(model_type, 0), saved(model_type, 1), saved("llava")
    language = {"merge_method": "linear", "parameters": {"weight": 1.0},
                "models": [{"model": str(a)}, {"model": str(b)}]}
    left_out = merge({"components": {"vision": {"source": str(b)}, "language": language},
                      "output": {"format": "family"}}, tmp_path / "left_out", quiet=True)
    named = merge({"components": {"vision": {"source": str(b)}, "projector": {"source": str(a)}, "language": language},
                   "output": {"format": model_type}}, tmp_path / "named", quiet=True)
    got, sa, sb = (_loads_strictly(model_type, f) for f in (left_out, a, b))
    for k, v in got.items():  # the audio tower, outside: the language model's reference's (no projector source)
        want = {"language": (sa[k] + sb[k]) / 2, "vision": sb[k], None: sa[k]}[_component_of(model_type, k)]
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)
    assert load_file(named / "model.safetensors").keys() == load_file(left_out / "model.safetensors").keys()
    refused = [({"vision": {"source": str(b)}, "projector": {"source": str(llava)}, "language": language}, model_type,
                "has no projector (its vision tower writes the language model's width itself)"),
               ({"vision": {"source": str(llava)}, "language": {"source": str(llava)}}, "llava",
                "llava (" + str(llava) + ") holds a projector"),
               ({"projector": {"source": str(a)}}, "hf", "holds no projector tensors: nothing to write")]
    for components, fmt, said in refused:
        recipe = tmp_path / "recipe.json"
        recipe.write_text(json.dumps({"components": components, "output": {"format": fmt}}))
        one_line_error(run("merge", recipe, "--out", tmp_path / "out", "--quiet"), said)
        assert not (tmp_path / "out").exists()
    r = run("stitch", "--vision", llava, "--language", lm, "--projector", a, "--out", tmp_path / "out", "--quiet")
    one_line_error(r, str(a), "holds no projector")
    assert not (tmp_path / "out").exists()
    shown = json.loads(run("inspect", a, "--json").stdout)["components"]
    assert shown["projector"]["tensors"] == 0 and shown["vision"]["tensors"] and shown["language"]["tensors"]
    assert "  projector: none (the vision tower writes the language model's width)\n" in run("inspect", a).stdout


CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _linear_targets(model, model_type, per_component=2):
    """Full names of the first few nn.Linear modules of the language model and of the vision tower; a vision part
    with no nn.Linear (a tower or tokenizer of convolutions) gets its first ungrouped convolutions instead, of
    torch's own classes (peft 0.22 builds its LoRA layer by the layer's class with torch's arguments, which timm's
    Conv2dSame does not take)."""
    picked = {"language": [], "vision": []}
    convs = []
    for name, module in model.named_modules():
        c = _component_of(model_type, name + ".weight")
        if isinstance(module, torch.nn.Linear) and c in picked and len(picked[c]) < per_component \
                and not name.endswith("lm_head"):
            picked[c].append(name)
        elif type(module) in CONVS and module.groups == 1 and c == "vision" and len(convs) < per_component:
            convs.append(name)
    return picked["language"] + (picked["vision"] or convs)


# LoRA applications that fail, and why (strict xfail: a fix shows).
LORA_FAILS: dict[str, str] = {}
WITH_LORA = [pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=LORA_FAILS[t]))
             if t in LORA_FAILS else t for t in REPRESENTATIVE]


@pytest.mark.parametrize("model_type", WITH_LORA)
def test_base_plus_peft_lora_matches_merge_and_unload(model_type, saved, tmp_path):
    """A peft LoRA on linear layers of the language model and the vision tower (its convolutions where it has no
    linear layer), applied by `base+lora`: every tensor equals peft's merge_and_unload on the family's own class."""
    from peft import LoraConfig, get_peft_model

    base = saved(model_type)
    cls = model_class(contract_family(model_type).cls)
    model = cls.from_pretrained(base)
    targets = _linear_targets(model, model_type)
    torch.manual_seed(3)
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets))
    tuned.save_pretrained(tmp_path / "lora")
    theirs = tuned.merge_and_unload().state_dict()  # the adapter in memory: peft's reload of its own file can
    # drop modules (deepseek_ocr2), which would make the reference wrong, not mmmerge
    recipe = {"merge_method": "passthrough", "dtype": "float32", "models": [{"model": f"{base}+{tmp_path / 'lora'}"}]}
    out = merge(recipe, tmp_path / "out", quiet=True)
    ours, plain = _loads_strictly(model_type, out), _loads_strictly(model_type, base)
    changed = {_component_of(model_type, k) for k in ours if not torch.equal(ours[k], plain[k])}
    assert changed == {"language", "vision"}, (targets, changed)
    for k, v in ours.items():
        torch.testing.assert_close(v, theirs[k], rtol=0, atol=1e-5, msg=k)


# Towers stitch refuses that do run on pixel values alone (strict xfail: a fix shows).
REFUSED_BUT_RUNS = {
    "florence2": "its tower's forward names the pixel values hidden_states, which the derivation reads as another "
                 "input (it writes a feature map, not the hidden-state sequence a LLaVA takes, so it stays refused)",
}
REFUSED_BY_STITCH = [pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=REFUSED_BUT_RUNS[t]))
                     if t in REFUSED_BUT_RUNS else t
                     for t in TINY if t not in HEAVY and contract_family(t).not_in_llava]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from stitch_parts import make_lm

    return make_lm(tmp_path_factory.mktemp("lm"))


@pytest.mark.parametrize("model_type", REFUSED_BY_STITCH)
def test_stitch_refuses_a_tower_llava_cannot_hold_in_one_line(model_type, saved, lm, tmp_path):
    """`mmmerge stitch --vision` of a family whose tower needs more than pixel values: one `error:` line that says
    why, nothing written; and the tower, called as a LLaVA calls its tower (pixel values only), does fail."""
    from cli_run import one_line_error, run

    r = run("stitch", "--vision", saved(model_type), "--language", lm, "--projector-type", "mlp2x_gelu",
            "--out", tmp_path / "out", "--quiet")
    one_line_error(r, contract_family(model_type).not_in_llava, "a LLaVA checkpoint cannot hold it")
    assert not (tmp_path / "out").exists()
    if model_type in FAMILIES:  # a hand row's reason is proven in tests/test_stitch_families.py
        return
    try:  # each tower fails in its own way (a missing input, a shape), or gives no hidden states (IDEFICS')
        out = _tower_on_pixels_alone(saved(model_type), model_type)
    except Exception:  # noqa: BLE001
        return
    assert not getattr(out, "hidden_states", None)


def _tower_on_pixels_alone(folder, model_type):
    """The family's vision tower called as a LLaVA calls its tower: a batch of square images, nothing else."""
    family = contract_family(model_type)
    model = model_class(family.cls).from_pretrained(folder)
    tower = model.get_submodule(next(p for c, p, _ in family.parts if c == "vision").rstrip("."))
    size = getattr(getattr(model.config, family.vision_config), "image_size", 32)
    size = size if type(size) is int else 32
    with torch.no_grad():
        return tower(torch.zeros(1, 3, size, size), output_hidden_states=True)


# Towers the derivation lets a LLaVA hold that do not run on pixel values alone (strict xfail: a fix shows).
HELD_BUT_FAILS: dict[str, str] = {}
HELD_BY_LLAVA = [pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=HELD_BUT_FAILS[t]))
                 if t in HELD_BUT_FAILS else t for t in TINY
                 if t not in HEAVY and t not in TRANSFORMERS_FAILS and not contract_family(t).not_in_llava]


@pytest.mark.parametrize("model_type", HELD_BY_LLAVA)
def test_a_tower_stitch_accepts_runs_on_pixels_alone(model_type, saved):
    """The other side of the refusal: a tower the derivation lets a LLaVA hold computes hidden states from images
    alone, as LLaVA's forward asks of it."""
    assert _tower_on_pixels_alone(saved(model_type), model_type).hidden_states
