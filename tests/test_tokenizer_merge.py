"""Tokenizer merging (`tokenizer_source`, `tokenizer:` sections, `pad_to_multiple_of`) and `chat_template`, with
mergekit 0.1.5 as the oracle: every output token's embedding and head rows equal mergekit's."""

import json
import os

import jinja2
import pytest
import torch
import transformers
from safetensors.torch import load_file

from mmmerge import merge
from mmmerge.engine.chat_templates import CHAT_TEMPLATES
from mmmerge.errors import MMMergeError
from tiny import llama_config, randomize
from tiny_tokenizer import SENTENCES, make_tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and two fine-tunes whose tokenizers differ: each adds words of its own, in its own id order."""
    root = tmp_path_factory.mktemp("tok")
    extra = {"base": [], "a": ["the zebra sings loudly", "zebra zebra"], "b": ["a violet moon", "the moon sings"]}
    paths = {}
    for seed, (name, more) in enumerate(extra.items()):
        tok = make_tokenizer(root / name, SENTENCES + more)
        for tied in (False, True):
            folder = root / f"{name}{'-tied' if tied else ''}"
            if tied:
                make_tokenizer(folder, SENTENCES + more)
            model = randomize(transformers.LlamaForCausalLM(llama_config(vocab_size=len(tok),
                                                                         tie_word_embeddings=tied)), seed)
            model.save_pretrained(folder)
            paths[name + ("-tied" if tied else "")] = str(folder)
    return paths


def mergekit_merge(cfg, out):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(cfg), str(out),
              options=MergeOptions(quiet=True, copy_tokenizer=True, write_model_card=False))
    return out


def rows_by_token(folder):
    """{tensor name: {token: row}} for the vocabulary tensors, and the tokenizer's vocabulary."""
    tensors = load_file(folder / "model.safetensors")
    vocab = transformers.AutoTokenizer.from_pretrained(folder).get_vocab()
    out = {}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            out[name] = {tok: tensors[name][i] for tok, i in vocab.items()}
    return out, tensors, vocab


def assert_same_as_mergekit(cfg, tmp_path):
    theirs, theirs_all, theirs_vocab = rows_by_token(mergekit_merge(cfg, tmp_path / "mergekit"))
    out = merge(cfg, tmp_path / "mmmerge", quiet=True)
    ours, ours_all, ours_vocab = rows_by_token(out)
    assert set(ours_vocab) == set(theirs_vocab)
    assert ours.keys() == theirs.keys()
    for name in ours:
        for tok in ours_vocab:
            torch.testing.assert_close(ours[name][tok], theirs[name][tok], rtol=0, atol=1e-6, msg=(name, tok))
    for name, t in theirs_all.items():
        if name not in ours:
            assert t.shape == ours_all[name].shape
            torch.testing.assert_close(ours_all[name], t, rtol=0, atol=1e-6, msg=name)
        else:
            assert t.shape == ours_all[name].shape  # padded rows included
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == json.loads((tmp_path / "mergekit" / "config.json").read_text())["vocab_size"]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return out


@pytest.mark.parametrize("source", ["union", "base", "a"])
def test_tokenizer_source_rows_equal_mergekit(models, tmp_path, source):
    m = models
    cfg = {"merge_method": "linear", "dtype": "float32", "base_model": m["base"],
           "models": [{"model": m["base"], "parameters": {"weight": 0.2}}, {"model": m["a"], "parameters": {"weight": 0.5}},
                      {"model": m["b"], "parameters": {"weight": 0.3}}],
           "tokenizer_source": m[source] if source == "a" else source}
    out = assert_same_as_mergekit(cfg, tmp_path)
    if source == "union":
        vocab = transformers.AutoTokenizer.from_pretrained(out).get_vocab()
        assert {"zebra", "violet", "moon"} <= set(vocab)  # tokens of each fine-tune are in the output


@pytest.mark.parametrize("form", ["tokenizer_source", "tokenizer"])
def test_tokenizer_source_outside_the_merge_equals_mergekit(models, tmp_path, form):
    """A published config names a tokenizer model it does not merge: its vocabulary is the output's, the merged
    models' rows follow it (its own tokens no merged model has get mergekit's rows), its weights are not read."""
    m = models
    cfg = {"merge_method": "linear", "dtype": "float32", "base_model": m["base"],
           "models": [{"model": m["base"], "parameters": {"weight": 0.4}}, {"model": m["a"], "parameters": {"weight": 0.6}}],
           **({"tokenizer_source": m["b"]} if form == "tokenizer_source" else {"tokenizer": {"source": m["b"]}})}
    out = assert_same_as_mergekit(cfg, tmp_path)
    vocab = transformers.AutoTokenizer.from_pretrained(out).get_vocab()
    assert vocab == transformers.AutoTokenizer.from_pretrained(m["b"]).get_vocab() and "violet" in vocab
    assert "zebra" not in vocab  # a's own word: not in b's vocabulary


def test_tokenizer_section_with_tokens_and_padding(models, tmp_path):
    m = models
    cfg = {"merge_method": "ties", "dtype": "float32", "base_model": m["base"],
           "parameters": {"density": 0.5, "weight": 0.5},
           "models": [{"model": m["a"]}, {"model": m["b"]}],
           "tokenizer": {"source": "union", "pad_to_multiple_of": 16,
                         "tokens": {"zebra": {"source": m["a"]},
                                    "moon": {"source": {"kind": "zero"}, "force": True},
                                    "<brand_new>": {"source": {"kind": "model_token", "model": m["b"], "token": "violet"}},
                                    "sings": {"source": {"kind": "model_token", "model": m["base"], "token_id": 3}}}}}
    out = assert_same_as_mergekit(cfg, tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] % 16 == 0


def test_tied_models_under_union(models, tmp_path):
    m = models
    cfg = {"merge_method": "linear", "dtype": "float32", "tokenizer_source": "union",
           "models": [{"model": m["a-tied"], "parameters": {"weight": 0.5}},
                      {"model": m["b-tied"], "parameters": {"weight": 0.5}}]}
    out = assert_same_as_mergekit(cfg, tmp_path)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True


@pytest.mark.parametrize("setting", ["chatml", "llama3", "auto", "{% for m in messages %}{{ m['content'] }}{% endfor %}"])
def test_chat_template_is_written_with_the_tokenizer(models, tmp_path, setting):
    m = models
    cfg = {"merge_method": "linear", "models": [{"model": m["a"], "parameters": {"weight": 1.0}}],
           "chat_template": setting}
    out = merge(cfg, tmp_path / "out", quiet=True)
    got = transformers.AutoTokenizer.from_pretrained(out).chat_template
    want = {"auto": transformers.AutoTokenizer.from_pretrained(m["a"]).chat_template.strip()}.get(
        setting, CHAT_TEMPLATES.get(setting, setting))
    assert got == want


def test_chat_template_renders_as_mergekits_where_its_render_is_clean(models):
    import importlib.resources

    from mergekit._data import chat_templates

    tok = transformers.AutoTokenizer.from_pretrained(models["a"])
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
    for name in ("chatml", "mistral"):
        theirs = importlib.resources.files(chat_templates).joinpath(f"{name}.jinja").read_text()
        for gen in (True, False):
            assert tok.apply_chat_template(conversation, chat_template=CHAT_TEMPLATES[name], tokenize=False,
                                           add_generation_prompt=gen) == \
                   tok.apply_chat_template(conversation, chat_template=theirs, tokenize=False, add_generation_prompt=gen)


def test_bad_tokenizer_settings_stop_before_writing(models, tmp_path):
    m = models
    base = {"merge_method": "linear", "models": [{"model": m["a"], "parameters": {"weight": 1.0}}]}
    with pytest.raises(MMMergeError, match="chat_template: 'chatmlx' is neither a known name"):
        merge({**base, "chat_template": "chatmlx"}, tmp_path / "o", quiet=True)
    with pytest.raises(MMMergeError, match="has no token 'nope'"):
        merge({**base, "tokenizer": {"tokens": {"x": {"source": {"kind": "model_token", "model": m["a"],
                                                                  "token": "nope"}}}}}, tmp_path / "o", quiet=True)
    broken = "{% for m in messages %}{{ m['content'] }"
    with pytest.raises(jinja2.TemplateError):  # the template fails where transformers compiles it, when used
        transformers.AutoTokenizer.from_pretrained(m["a"]).apply_chat_template(
            [{"role": "user", "content": "hi"}], chat_template=broken, tokenize=False)
    with pytest.raises(MMMergeError, match="chat_template: the Jinja template does not compile"):
        merge({**base, "chat_template": broken}, tmp_path / "o", quiet=True)
    size = len(transformers.AutoTokenizer.from_pretrained(m["a"]))
    for token_id in (99999, size, -1):
        with pytest.raises(MMMergeError, match=rf"token_id {token_id} is outside .* vocabulary of {size} tokens"):
            merge({**base, "tokenizer": {"source": "base", "tokens": {"x": {"source": {
                "kind": "model_token", "model": m["a"], "token_id": token_id}}}}}, tmp_path / "o", quiet=True)
    with pytest.raises(MMMergeError, match="give `tokenizer_source` or a `tokenizer` section, not both"):
        merge({**base, "tokenizer_source": "union", "tokenizer": {"source": "union"}}, tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()


def test_a_vlm_keeps_its_image_token_under_a_union_tokenizer(tmp_path):
    """A LLaVA's language model merged with a text-only LLM of another vocabulary under `tokenizer_source:
    union`: the output is a LLaVA whose tokenizer holds both vocabularies, whose <image> token keeps its id and
    row, and which transformers loads with its processor."""
    from tiny_llava import build_tiny_llava

    llava = build_tiny_llava(tmp_path / "llava", seed=1)
    tok = make_tokenizer(tmp_path / "lm", SENTENCES + ["a zebra sings"])
    cfg = json.loads((llava / "config.json").read_text())["text_config"]
    lm = randomize(transformers.LlamaForCausalLM(llama_config(vocab_size=len(tok), hidden_size=cfg["hidden_size"],
                                                              intermediate_size=cfg["intermediate_size"])), 4)
    lm.save_pretrained(tmp_path / "lm")
    out = merge({"merge_method": "linear", "tokenizer_source": "union",
                 "models": [{"model": str(llava), "parameters": {"weight": 0.5}},
                            {"model": str(tmp_path / "lm"), "parameters": {"weight": 0.5}}]}, tmp_path / "out",
                quiet=True)
    before = transformers.AutoTokenizer.from_pretrained(llava).get_vocab()
    after = transformers.AutoTokenizer.from_pretrained(out).get_vocab()
    assert after["<image>"] == before["<image>"] and "zebra" in after
    merged = transformers.LlavaForConditionalGeneration.from_pretrained(out)
    own = transformers.LlavaForConditionalGeneration.from_pretrained(llava)
    i = before["<image>"]  # only the LLaVA has it: its row, unmerged
    assert torch.equal(merged.model.language_model.embed_tokens.weight[i], own.model.language_model.embed_tokens.weight[i])
    assert merged.config.text_config.vocab_size == len(after)
    transformers.AutoProcessor.from_pretrained(out)


def test_each_vocabulary_tensor_is_read_once(models, monkeypatch, tmp_path):
    """Every model's re-indexed rows are built from every model's tensor; each input tensor is still read once
    (not once per model), and the merge equals one that reads them again for each model."""
    from mmmerge.checkpoint import LazyTensor
    from mmmerge.engine import tokenizer as tokenizer_module

    m = models
    cfg = {"merge_method": "linear", "dtype": "float32", "tokenizer_source": "union",
           "models": [{"model": m[n], "parameters": {"weight": w}} for n, w in (("base", 0.2), ("a", 0.5), ("b", 0.3))]}
    reads = []

    def counting(t):
        return LazyTensor(t.shape, t.dtype, lambda: reads.append(1) or t.load())

    wrapped = {}

    class Counted(tokenizer_module.SharedLoads):
        def lazy(self, name, t):  # the same input tensor gets the same counting wrapper
            return super().lazy(name, wrapped.setdefault(id(t), counting(t)))

    class EveryTime:  # what reindex did before: each model reads every model's tensor itself
        def __init__(self, consumers):
            pass

        def lazy(self, name, t):
            return counting(t)

    results = {}
    for label, loads in (("once", Counted), ("each", EveryTime)):
        reads.clear()
        monkeypatch.setattr(tokenizer_module, "SharedLoads", loads)
        merge(cfg, tmp_path / label, quiet=True)
        results[label] = len(reads)
    assert results == {"once": 2 * 3, "each": 2 * 3 * 3}  # embeddings and head of three models
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("once", "each"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_tokenizer_source_outside_the_merge_is_an_input_no_output_may_replace(models, tmp_path):
    """`--force` replaces a previous mmmerge output, but not one the recipe reads a tokenizer from."""
    from mmmerge.errors import UnsafeOutputError

    m = models
    linear = {"merge_method": "linear", "dtype": "float32", "base_model": m["base"], "tokenizer_source": "base",
              "models": [{"model": m["base"], "parameters": {"weight": 0.5}}, {"model": m["a"], "parameters": {"weight": 0.5}}]}
    previous = merge(linear, tmp_path / "previous", quiet=True)
    before = {p.name: p.read_bytes() for p in previous.iterdir() if p.is_file()}
    merge({**linear, "tokenizer_source": str(previous)}, tmp_path / "elsewhere", quiet=True)  # a valid recipe
    with pytest.raises(UnsafeOutputError):
        merge({**linear, "tokenizer_source": str(previous)}, previous, force=True, quiet=True)
    assert {p.name: p.read_bytes() for p in previous.iterdir() if p.is_file()} == before
