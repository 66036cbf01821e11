"""Every image-text-to-text type the contract does not split (test_derived_families.NOT_SPLIT), and every other
multimodal LM transformers lists (the audio-text models of MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES), merges whole, or
is listed here with the reason it is not proven (#24 "Done when": every other buildable type merges whole, or is
refused with one line).

A linear merge of a tiny random model (examples/tiny_any_family.py, no per-family code) and a perturbed copy: the
output has the base's tensor names, shapes and dtypes, equals the mean, and loads strictly in the type's own
image-text-to-text (or multimodal LM) class; `inspect` says "whole model, no components" and why (or, for a type
another adapter reads, what reads it). A type added to NOT_SPLIT is checked here at once, or fails until listed with
its reason.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmmerge import describe, merge
from mmmerge.adapters import detect_adapter, hf_whole
from mmmerge.adapters.hf_common import auto_class_names, read_config
from test_derived_families import ALL_TYPES, NOT_SPLIT
from tiny_any_family import model_class, perturb_, tiny_any, tiny_config

# Multimodal LMs beyond image-text-to-text: audio-text models (Voxtral, Qwen2-Audio) and the Qwen omni models whole.
AUDIO_TEXT = sorted(set(auto_class_names("MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES")) - set(ALL_TYPES))

# Types whose shrunk default config does not build or save a model, and why (each checked to fail below).
NOT_BUILT_TINY = {
    "qwen3_omni_moe": "its default config does not build its class (the talker's text config lacks "
                      "shared_expert_intermediate_size, which the class reads)",
    "nemo_speechlm": "the shrunk config fails the class's own check that its head's audio width is the audio "
                     "encoder's (a width the config derives, which no shrunk key names)",
    "kyutai_speech_to_text": "its codec's upsample_groups (512) does not divide the shrunk width; set to it, the "
                             "codec's quantizers alone make the model 25M parameters",
}
# Built tiny, but not tried: building it takes longer than a test may (not checked: that is the point).
TOO_SLOW_TO_BUILD: dict[str, str] = {}
# Built tiny, but large: not merged here (a meta-device build checks the size below).
TOO_LARGE = {
    "qwen2_5_omni": "its talker and code-to-wave model keep sizes no shrunk key names (123M parameters)",
    "vibevoice_asr": "its acoustic and semantic tokenizers keep sizes no shrunk key names (686M parameters)",
}
LARGE = 20_000_000
# Types that merge whole but whose output (as their input) transformers cannot load, and why (checked to fail: a fix
# in transformers shows).
TRANSFORMERS_FAILS: dict[str, str] = {}
# Types another adapter than the whole-model one reads: (the adapter module's name, why).
READ_BY_ANOTHER = {
    **dict.fromkeys(["fuyu", "mistral4"],
                    ("hf_causal_lm", "transformers registers its class as a causal LM and the config has no vision "
                                     "tower: read as one language model")),
    **dict.fromkeys(["phi4_multimodal", "moss_transcribe_diarize"],
                    ("hf_causal_lm", "transformers registers its class as a causal LM, the audio (and image) "
                                     "embedders inside it: read as one language model, every tensor merged")),
}

# Tiny models that still take seconds to build and merge: marked slow.
HEAVY = {"udop"}

LISTED = {**NOT_BUILT_TINY, **TOO_SLOW_TO_BUILD, **TOO_LARGE}
WHOLE = [t for t in sorted(NOT_SPLIT) if t in ALL_TYPES and t not in LISTED] + \
    [t for t in AUDIO_TEXT if t not in LISTED]
PARAMS = [pytest.param(t, marks=pytest.mark.slow) if t in HEAVY else t for t in WHOLE]


def test_the_tables_name_not_split_types_only():
    """Each listed type is one the contract does not split (a type that starts to split leaves these tables)."""
    tables = set(LISTED) | set(TRANSFORMERS_FAILS) | set(READ_BY_ANOTHER) | HEAVY
    assert tables <= set(NOT_SPLIT) & set(ALL_TYPES) | set(AUDIO_TEXT), tables - set(NOT_SPLIT)


def _build_and_save(model_type, folder):
    """On the meta device first (a config that does not build fails there in a fraction of the time), then for real
    and saved (transformers' save-time converters may refuse what builds)."""
    with torch.device("meta"):
        model_class(model_type)._from_config(tiny_config(model_type))
    tiny_any(model_type).save_pretrained(folder)


@pytest.mark.parametrize("model_type", sorted(NOT_BUILT_TINY))
def test_a_type_listed_as_not_built_tiny_does_not_build(model_type, tmp_path):
    with pytest.raises(Exception):  # noqa: B017  (each fails in its own way)
        _build_and_save(model_type, tmp_path)


@pytest.mark.parametrize("model_type", sorted(TOO_LARGE))
def test_a_type_listed_as_too_large_is(model_type):
    cls = model_class(model_type)
    with torch.device("meta"):
        model = cls._from_config(tiny_config(model_type))
    assert sum(p.numel() for p in model.parameters()) > LARGE


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """model_type -> (base folder, tuned folder): one tiny model saved, then saved again with every parameter
    perturbed (one build per type)."""
    made = {}

    def get(model_type):
        if model_type not in made:
            root = tmp_path_factory.mktemp(model_type)
            model = tiny_any(model_type)
            model.save_pretrained(root / "base")
            perturb_(model).save_pretrained(root / "tuned")
            made[model_type] = root / "base", root / "tuned"
        return made[model_type]

    return get


def _file_tensors(folder: Path) -> dict:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("model_type", PARAMS)
def test_merges_whole_as_the_mean_and_loads_strictly(model_type, pair, tmp_path):
    base, tuned = pair(model_type)
    out = merge({"merge_method": "linear", "models": [{"model": str(base), "parameters": {"weight": 0.5}},
                                                      {"model": str(tuned), "parameters": {"weight": 0.5}}]},
                tmp_path / "out", quiet=True)
    a, b, got = _file_tensors(base), _file_tensors(tuned), _file_tensors(out)
    assert {k: (v.shape, v.dtype) for k, v in got.items()} == {k: (v.shape, v.dtype) for k, v in a.items()}
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for k, v in got.items():
        want = a[k] if not a[k].is_floating_point() else (0.5 * a[k].double() + 0.5 * b[k].double()).to(v.dtype)
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)
    if model_type in TRANSFORMERS_FAILS:
        for folder in (base, out):
            with pytest.raises(Exception):  # noqa: B017  (transformers' own failure, whatever it raises)
                model_class(model_type).from_pretrained(folder)
        return
    _, info = model_class(model_type).from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


@pytest.mark.parametrize("model_type", WHOLE)
def test_inspect_says_whole_model_and_why(model_type, pair):
    base = pair(model_type)[0]
    adapter = detect_adapter(base)
    if model_type in READ_BY_ANOTHER:
        assert adapter.__name__.rsplit(".", 1)[-1] == READ_BY_ANOTHER[model_type][0]
        return
    assert adapter is hf_whole
    text = describe(base)
    assert f"whole model, no components ({hf_whole.why_whole(read_config(base))})" in text, text


@pytest.mark.parametrize("model_type", [t for t in WHOLE if t not in READ_BY_ANOTHER])
def test_the_reason_is_a_precise_one(model_type):
    """The reason `inspect` gives is never the catch-all "no split known": where the config's shape does not say it,
    the derivation's own reason does, from the config a checkpoint of the type holds."""
    config = tiny_config(model_type).to_dict()
    why = hf_whole.why_whole({**config, "model_type": model_type})
    assert "split known" not in why, why
