"""Whole-model fallback (#24, item 2): a transformers folder mmmerge cannot split into components merges whole,
tensor by tensor, as mergekit merges any architecture.

Each kind is a tiny random model built from its own transformers config class (tests/tiny_whole.py):
image-text-to-text families (the fallback is forced for them, whatever the family table derives), encoder-decoder
captioners and an action policy. Merges are checked against an expectation computed here (linear) or by
mergekit's own kernel (ties), on what transformers loads from the output with strict loading.
"""

import json

import pytest
import torch
import transformers as T
from safetensors import safe_open

from cli_run import one_line_error, run
from mergekit_oracle import mergekit_result
from mmmerge.adapters import detect_adapter, hf_multimodal, hf_whole
from mmmerge.adapters.hf_common import read_config
from tiny_tokenizer import make_tokenizer
from tiny_whole import CONFIGS, save_model

NO_SPLIT = "no vision/projector/language split"
REASONS = {"idefics2": NO_SPLIT, "vipllava": NO_SPLIT, "gemma4": NO_SPLIT, "t5gemma2": "an encoder-decoder",
           "vision-encoder-decoder": "an encoder-decoder", "pi0": "an action policy"}
ALL = sorted(CONFIGS)


@pytest.fixture(autouse=True)
def no_family_rows(monkeypatch):
    """The fallback itself: no family row is found for these types, whatever the table reads or derives."""
    detect, family_of = hf_multimodal.detect, hf_whole.family_of

    def ours(cfg):
        return isinstance(cfg, dict) and cfg.get("model_type") in CONFIGS

    monkeypatch.setattr(hf_multimodal, "detect", lambda path: not ours(read_config(path)) and detect(path))
    monkeypatch.setattr(hf_whole, "family_of", lambda cfg: None if ours(cfg) else family_of(cfg))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(model_type, dtype) -> [base folder, fine-tune folders ...], built on first use."""
    made = {}

    def get(model_type, dtype=torch.float32):
        if (model_type, dtype) not in made:
            root = tmp_path_factory.mktemp(f"{model_type}-{str(dtype)[6:]}")
            base = save_model(model_type, root / "base", seed=0, dtype=dtype)
            for i in (1, 2):
                save_model(model_type, root / f"ft{i}", seed=i, base=base, dtype=dtype, side=i)
            made[model_type, dtype] = [root / "base", root / "ft1", root / "ft2"]
        return made[model_type, dtype]

    return get


def file_tensors(folder):
    with safe_open(folder / "model.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def loaded_strictly(model_type, folder):
    """The state dict transformers loads from `folder`, which must hold every key and no other."""
    model, info = T.AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.state_dict()


def merge(tmp_path, recipe, *extra):
    (tmp_path / "recipe.yml").write_text(json.dumps(recipe))
    r = run("merge", tmp_path / "recipe.yml", "--out", tmp_path / "out", "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    return tmp_path / "out"


def check_layout_and_side_files(out, base):
    """Same names, shapes and dtypes as the base's file; the base's config and side files."""
    got, want = file_tensors(out), file_tensors(base)
    assert {k: (t.shape, t.dtype) for k, t in got.items()} == {k: (t.shape, t.dtype) for k, t in want.items()}
    assert json.loads((out / "preprocessor_config.json").read_text()) == {"written_by": 0}
    assert (out / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    assert T.GenerationConfig.from_pretrained(out).max_new_tokens == 7
    assert json.loads((out / "config.json").read_text())["model_type"] == json.loads(
        (base / "config.json").read_text())["model_type"]
    assert "of whole models (tensor by tensor" in (out / "README.md").read_text()


@pytest.mark.parametrize("model_type", ALL)
def test_inspect_says_whole_model_and_why(model_type, models):
    base = models(model_type)[0]
    assert detect_adapter(base) is hf_whole
    r = run("inspect", base)
    assert r.returncode == 0, r.stderr
    assert "whole model, no components" in r.stdout and REASONS[model_type] in r.stdout, r.stdout
    s = json.loads(run("inspect", base, "--json").stdout)
    assert list(s["components"]) == ["model"] and REASONS[model_type] in s["whole_model"]
    assert s["components"]["model"]["parameters"] == sum(t.numel() for t in file_tensors(base).values())


@pytest.mark.parametrize("model_type", ALL)
def test_linear_merge_is_the_mean_in_float32_rounded_once(model_type, models, tmp_path):
    base, ft1, _ = models(model_type, torch.bfloat16)
    out = merge(tmp_path, {"merge_method": "linear", "dtype": "float32", "out_dtype": "bfloat16",
                           "models": [{"model": str(base), "parameters": {"weight": 1.0}},
                                      {"model": str(ft1), "parameters": {"weight": 3.0}}]})
    check_layout_and_side_files(out, base)
    a, b = loaded_strictly(model_type, base), loaded_strictly(model_type, ft1)
    got = loaded_strictly(model_type, out)
    assert got.keys() == a.keys()
    for name, t in got.items():
        want = ((a[name].float() * 1.0 + b[name].float() * 3.0) / 4.0).to(a[name].dtype)
        assert torch.equal(t, want), name
    assert any(not torch.equal(got[n], a[n]) for n in got)


@pytest.mark.parametrize("model_type", ALL)
def test_ties_merge_matches_mergekit_per_tensor(model_type, models, tmp_path):
    base, ft1, ft2 = models(model_type)
    params = [{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.7}]
    out = merge(tmp_path, {"merge_method": "ties", "base_model": str(base),
                           "models": [{"model": str(ft1), "parameters": params[0]},
                                      {"model": str(ft2), "parameters": params[1]}]})
    check_layout_and_side_files(out, base)
    sds = [loaded_strictly(model_type, p) for p in (base, ft1, ft2)]
    got = loaded_strictly(model_type, out)
    for name, t in got.items():
        want = mergekit_result("ties", [sds[1][name], sds[2][name]], sds[0][name], params, {})
        torch.testing.assert_close(t, want, rtol=0, atol=1e-6, msg=name)


def test_bin_weights_merge_whole(models, tmp_path):
    """A folder of weights_only-loadable .bin weights merges as its safetensors twin does."""
    base, ft1, _ = models("pi0")
    folders = []
    for src in (base, ft1):
        dst = tmp_path / f"bin-{src.name}"
        dst.mkdir()
        (dst / "config.json").write_text((src / "config.json").read_text())
        torch.save(file_tensors(src), dst / "pytorch_model.bin")
        folders.append(dst)
    assert detect_adapter(folders[0]) is hf_whole
    out = merge(tmp_path, {"merge_method": "linear",
                           "models": [{"model": str(f), "parameters": {"weight": 1.0}} for f in folders]})
    a, b, got = (loaded_strictly("pi0", p) for p in (base, ft1, out))
    for name, t in got.items():
        torch.testing.assert_close(t, (a[name] + b[name]) / 2, rtol=0, atol=1e-7, msg=name)


def test_a_whole_model_beside_a_split_one_is_one_line(models, tmp_path):
    from tiny_llava import build_tiny_llava

    whole = models("vipllava")[0]
    llava = build_tiny_llava(tmp_path / "llava", seed=1)
    (tmp_path / "r.yml").write_text(json.dumps({"merge_method": "linear", "models": [
        {"model": str(whole), "parameters": {"weight": 1.0}}, {"model": str(llava), "parameters": {"weight": 1.0}}]}))
    one_line_error(run("merge", tmp_path / "r.yml", "--out", tmp_path / "o", "--dry-run"),
                   str(llava), str(whole), "merges only whole")
    (tmp_path / "c.yml").write_text(json.dumps({"components": {"language": {"source": str(whole)}}}))
    one_line_error(run("merge", tmp_path / "c.yml", "--out", tmp_path / "o", "--dry-run"),
                   str(whole), "a whole model with no language component")
    assert not (tmp_path / "o").exists()


def test_slices_of_a_whole_model_are_one_line(models, tmp_path):
    base, ft1, _ = models("idefics2")
    (tmp_path / "r.yml").write_text(json.dumps({"merge_method": "linear", "slices": [{"sources": [
        {"model": str(base), "layer_range": [0, 2]}, {"model": str(ft1), "layer_range": [0, 2]}]}]}))
    one_line_error(run("merge", tmp_path / "r.yml", "--out", tmp_path / "o", "--dry-run"), "slices:", "whole")


def test_a_tensor_that_differs_is_named(models, tmp_path):
    base, ft1, _ = models("vision-encoder-decoder")
    other = tmp_path / "other"
    other.mkdir()
    tensors = file_tensors(ft1)
    victim = sorted(tensors)[5]
    from safetensors.torch import save_file

    (other / "config.json").write_text((ft1 / "config.json").read_text())
    save_file({**tensors, victim: torch.zeros(3, 3)}, other / "model.safetensors")
    recipe = {"merge_method": "linear", "models": [{"model": str(base), "parameters": {"weight": 1.0}},
                                                   {"model": str(other), "parameters": {"weight": 1.0}}]}
    (tmp_path / "r.yml").write_text(json.dumps(recipe))
    one_line_error(run("merge", tmp_path / "r.yml", "--out", tmp_path / "o", "--dry-run"), victim)
    save_file({k: v for k, v in tensors.items() if k != victim}, other / "model.safetensors")
    one_line_error(run("merge", tmp_path / "r.yml", "--out", tmp_path / "o", "--dry-run"), victim)


def test_tokenizer_source_reindexes_the_token_embeddings(models, tmp_path):
    """`tokenizer_source: union` as mergekit runs it on a model it has no definition of: the class's token
    embedding and head follow the output vocabulary (a token one model lacks takes the other's row), every other
    tensor keeps its shape, and the config's vocab_size follows."""
    base, ft1, _ = models("vipllava")
    other = tmp_path / "other"
    other.mkdir()
    for f in ft1.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    make_tokenizer(other, ["a red square with seven new words nobody said", "is there a circle ? yes no"])
    out = merge(tmp_path, {"merge_method": "linear", "tokenizer_source": "union", "chat_template": "chatml",
                           "models": [{"model": str(base), "parameters": {"weight": 1.0}},
                                      {"model": str(other), "parameters": {"weight": 1.0}}]})
    vocab = T.AutoTokenizer.from_pretrained(out).get_vocab()
    own = {p: T.AutoTokenizer.from_pretrained(p).get_vocab() for p in (base, other)}
    assert set(vocab) == set(own[base]) | set(own[other]) and len(vocab) > len(own[base])
    assert "im_start" in T.AutoTokenizer.from_pretrained(out).chat_template
    assert json.loads((out / "config.json").read_text())["text_config"]["vocab_size"] == len(vocab)
    sd = {p: loaded_strictly("vipllava", p) for p in (base, other)}
    got = loaded_strictly("vipllava", out)
    token_indexed = {"model.language_model.embed_tokens.weight", "lm_head.weight"}
    for name, t in got.items():
        if name not in token_indexed:
            torch.testing.assert_close(t, (sd[base][name] + sd[other][name]) / 2, rtol=0, atol=1e-6, msg=name)
            continue
        assert t.shape[0] == len(vocab)
        for token, i in vocab.items():
            rows = [sd[p][name][own[p][token]] for p in (base, other) if token in own[p]]
            torch.testing.assert_close(t[i], sum(rows) / len(rows), rtol=0, atol=1e-6, msg=f"{name} {token}")


def test_a_vlm_with_a_vision_tower_is_not_read_as_its_language_model(tmp_path):
    """gemma4 registers its whole VLM class as a causal LM too: with a vision tower it merges whole."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma4", "vision_config": {"model_type": "x"},
                                                      "text_config": {"model_type": "y"}}))
    assert detect_adapter(tmp_path) is hf_whole
    one_line_error(run("inspect", tmp_path), str(tmp_path), "no weights found")


@pytest.mark.parametrize("model_type", ["vipllava", "pi0"])
def test_a_search_places_a_whole_models_file_names_as_transformers_loads_them(model_type, models):
    """A search fills a model built from the output config; vipllava's and pi0's files hold names transformers
    renames on load. Each file tensor goes where transformers' own loader puts it; a tensor the model does not
    hold is one line naming it, not a KeyError."""
    from mmmerge.engine.plan import plan_merge
    from mmmerge.errors import RecipeError
    from mmmerge.searching.candidate import _names_in_memory

    base, ft1, _ = models(model_type)
    plan = plan_merge({"merge_method": "linear", "models": [{"model": str(base), "parameters": {"weight": 1.0}},
                                                            {"model": str(ft1), "parameters": {"weight": 1.0}}]})
    loaded = T.AutoModelForImageTextToText.from_pretrained(base).state_dict()
    places = _names_in_memory(plan, set(loaded))
    assert any(file != memory for file, memory in places.items())
    files = file_tensors(base)
    assert all(torch.equal(files[file], loaded[memory]) for file, memory in places.items())
    with pytest.raises(RecipeError, match=r"output tensor \S+ has no place in the whole model"):
        _names_in_memory(plan, set(loaded) - {next(iter(places.values()))})


def test_a_gradient_runs_over_each_stack_of_layers(models, tmp_path):
    """As mergekit infers a model it has no definition of: t = layer / (layers - 1) within the encoder's 3 layers
    and within the decoder's 2, 0 outside the layers."""
    base, ft1, _ = models("vision-encoder-decoder")
    out = merge(tmp_path, {"merge_method": "linear",
                           "models": [{"model": str(base), "parameters": {"weight": 1.0}},
                                      {"model": str(ft1), "parameters": {"weight": [0.0, 2.0]}}]})
    cfg = T.AutoConfig.from_pretrained(base)
    a, b = loaded_strictly("vision-encoder-decoder", base), loaded_strictly("vision-encoder-decoder", ft1)
    got = loaded_strictly("vision-encoder-decoder", out)
    stacks = {"encoder.layers.": cfg.encoder.num_hidden_layers, "decoder.transformer.h.": cfg.decoder.n_layer}
    seen = set()
    for name, t in got.items():
        prefix = next((p for p in stacks if name.startswith(p)), None)
        pos = int(name[len(prefix):].split(".")[0]) / (stacks[prefix] - 1) if prefix else 0.0
        seen.add(pos)
        w = 2.0 * pos
        torch.testing.assert_close(t, (a[name] + w * b[name]) / (1.0 + w), rtol=0, atol=1e-6, msg=name)
    assert seen == {0.0, 0.5, 1.0}


def test_integer_buffers_are_copied_when_equal_and_named_when_not(models, tmp_path):
    """A whole model carries what its class saves, integer buffers too (BatchNorm's num_batches_tracked): copied
    where every input agrees, as mergekit does, and one line naming the tensor where they differ."""
    from safetensors.torch import save_file

    folders = []
    for i, src in enumerate(models("pi0")[:2]):
        dst = tmp_path / f"m{i}"
        dst.mkdir()
        (dst / "config.json").write_text((src / "config.json").read_text())
        save_file({**file_tensors(src), "norm.num_batches_tracked": torch.tensor(100)}, dst / "model.safetensors")
        folders.append(dst)
    recipe = {"merge_method": "linear", "models": [{"model": str(f), "parameters": {"weight": 1.0}} for f in folders]}
    out = merge(tmp_path, recipe)
    assert file_tensors(out)["norm.num_batches_tracked"].item() == 100
    save_file({**file_tensors(folders[1]), "norm.num_batches_tracked": torch.tensor(7)}, folders[1] / "model.safetensors")
    (tmp_path / "r.yml").write_text(json.dumps(recipe))
    one_line_error(run("merge", tmp_path / "r.yml", "--out", tmp_path / "o", "--quiet"),
                   "tensor norm.num_batches_tracked (int64)")
    assert not (tmp_path / "o").exists()


def save_lora(model_type, base, folder):
    """A random peft LoRA of the model at `base` (q and v projections), and peft's own merged weights."""
    import peft

    model = T.AutoModelForImageTextToText.from_pretrained(base)
    torch.manual_seed(0)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                         init_lora_weights=False))
    wrapped.save_pretrained(folder)
    return {n: t.clone() for n, t in wrapped.merge_and_unload().state_dict().items()}


@pytest.mark.parametrize("model_type", ["idefics2", "vipllava", "pi0"])
def test_a_lora_applies_to_a_whole_model(model_type, models, tmp_path):
    """peft names modules as transformers names them in memory: idefics2's file names already, vipllava's and pi0's
    after transformers renames them on load. BASE+LORA in a merge gives peft's merge_and_unload."""
    base, ft1, _ = models(model_type)
    merged = save_lora(model_type, base, tmp_path / "lora")
    out = merge(tmp_path, {"merge_method": "linear",
                           "models": [{"model": f"{base}+{tmp_path / 'lora'}", "parameters": {"weight": 1.0}},
                                      {"model": str(ft1), "parameters": {"weight": 1.0}}]})
    other, got = loaded_strictly(model_type, ft1), loaded_strictly(model_type, out)
    for name, t in got.items():
        torch.testing.assert_close(t, (merged[name] + other[name]) / 2, rtol=0, atol=1e-6, msg=name)
    plain = loaded_strictly(model_type, base)
    assert any(not torch.equal(merged[n], plain[n]) for n in merged)  # the LoRA changed something


def test_mergekit_merges_idefics2_whole_as_mmmerge_does(models, tmp_path):
    """mergekit 0.1.5 has no definition of idefics2 and infers one from its tensor names (which transformers does
    not rename on load): the same bf16 ties merge from both, bit for bit, in mergekit's own rounding."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    from mergekit_oracle import magnitude_sorts_stable

    base, ft1, ft2 = models("idefics2", torch.bfloat16)
    recipe = {"merge_method": "ties", "base_model": str(base), "dtype": "bfloat16",
              "models": [{"model": str(ft1), "parameters": {"weight": 1.0, "density": 0.5}},
                         {"model": str(ft2), "parameters": {"weight": 0.5, "density": 0.7}}]}
    ours = file_tensors(merge(tmp_path, recipe))
    with magnitude_sorts_stable():
        run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "mergekit"),
                  options=MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    theirs = file_tensors(tmp_path / "mergekit")
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)


SMALL_LLAMA = dict(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
OTHER_CLASSES = {  # classes other than their type's causal LM: Whisper's and BART's causal LM is the decoder alone
    "LlamaModel": lambda: T.LlamaModel(T.LlamaConfig(**SMALL_LLAMA)),
    "LlamaForSequenceClassification": lambda: T.LlamaForSequenceClassification(T.LlamaConfig(**SMALL_LLAMA,
                                                                                              pad_token_id=0)),
    "WhisperForConditionalGeneration": lambda: T.WhisperForConditionalGeneration(T.WhisperConfig(
        vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=16,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)),
    "BartForConditionalGeneration": lambda: T.BartForConditionalGeneration(T.BartConfig(
        vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32)),
}


@pytest.mark.parametrize("cls", sorted(OTHER_CLASSES))
def test_a_folder_saved_from_another_class_than_its_causal_lm_merges_whole(cls, tmp_path):
    """A folder whose type has a causal LM class but that was saved from another class (a base model, a classifier,
    an encoder-decoder) is not read as that causal LM, which holds other names ("12 of 12 missing"): it merges whole,
    as the mean, and loads strictly."""
    from safetensors.torch import load_file

    from mmmerge import merge

    torch.manual_seed(0)
    model = OTHER_CLASSES[cls]()
    model.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "b")
    assert detect_adapter(tmp_path / "a") is hf_whole
    merge({"merge_method": "linear", "models": [{"model": str(tmp_path / m), "parameters": {"weight": 0.5}}
                                                for m in "ab"]}, tmp_path / "out", quiet=True)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert set(got) == set(a)
    for k, v in got.items():
        torch.testing.assert_close(v, (a[k] + b[k]) / 2, msg=k)
    _, info = type(model).from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
