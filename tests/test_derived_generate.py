"""generate and eval on derived families (#24 item 3), through processors built tiny from transformers' own tables
(examples/tiny_any_processor.py, no per-family code), and the processor's side files in a merged output.

For each derived type whose processor builds tiny and runs with its model: a tiny model and a perturbed copy, each
saved with the processor (the copy's image processor with another image_mean), merged linear. The output's
processor loads with AutoProcessor and is the base's; `mmmerge.generate` and `mmmerge.evaluate` answer what
transformers' own generate answers on the same inputs (greedy). The other types are listed with the reason.
"""

import inspect
import json

import pytest
import torch
import transformers as T
from PIL import Image

import eval_data
from mmmerge import evaluate, generate, merge
from mmmerge.eval.generate import build_prompt
from test_derived_families import HEAVY, TINY, TRANSFORMERS_FAILS
from tiny_any_family import model_class, perturb_, tiny_any, tiny_config
from tiny_any_processor import tiny_processor

QUESTION = "what is the color of the dog ?"
OTHER_MEAN = [0.25, 0.5, 0.75]  # the tuned copy's image processor: the output must not hold it

# Derived types whose processor is not built tiny, or does not run with the tiny model, and why (checked below).
NO_PROCESSOR = {
    **dict.fromkeys(["glm_ocr", "glmga", "kosmos-2", "kosmos-2.5", "qwen2_5_omni_thinker",
                     "qwen3_omni_moe_thinker"],
                    "transformers names no processor class for it"),
    **dict.fromkeys(["instructblip", "instructblipvideo"],
                    "its processor needs a second (Q-Former) tokenizer that no mapping names"),
    "aya_vision": "its processor writes more image-token ids than image tokens in the prompt (the tiny tokenizer "
                  "gives other image strings of its processor the same id)",
    "ovis2": "its processor expands an image into <IMG_ATOM> tokens, not the token the config names by image_token_id",
    "pp_chart2table": "its processor leaves the image token unexpanded: one token for the image's 256 features",
    "blip-2": "its processor reads the tokenizer's image_token as an AddedToken (`.content`), which the tiny "
              "tokenizer's image token, a string, is not",
    "qwen4_exp": "two layers leave only linear-attention layers in the cache; its other kind (indexed attention) "
                 "needs indexer sizes its default config leaves unset",
    **dict.fromkeys(["nemotron_h_omni", "gemma4"],
                    "its processor needs an audio feature extractor that transformers maps to no class for it"),
    "qianfan_ocr": "its processor counts `<image>` placeholders that no prompt of the tiny processor holds",
    "cosmos3_omni": "transformers names no processor class for it",
    "hunyuan_vl": "its processor takes an image only as <image_start><image><image_end>, which its chat template "
                  "writes (tencent/HunyuanOCR's); the tiny processor has no chat template",
    "granite4_vision": "the tiny processor's image tiles give its Window Q-Former a patch grid it cannot cut into "
                       "windows",
    **dict.fromkeys(["apertus1p5", "dots3_note", "gemma3n", "gemma4_unified", "inkling_mm_model"],
                    "its processor needs a feature extractor (audio) that transformers maps to no class for it"),
    "molmo2": "its processor counts image tokens in the prompt by a string the tiny processor's prompt does not "
              "hold (none in the text, hundreds in the ids)",
}

# Types whose tiny model answers nothing (the comparison would be void), and why (checked below).
ANSWERS_NOTHING = {
    "florence2": "the tiny model repeats its decoder's start token, the end-of-sequence one (its embeddings are "
                 "tied); test_an_encoder_decoder_answers_as_transformers_does starts its decoder at a word",
}

CANDIDATES = [t for t in TINY if t not in HEAVY and t not in TRANSFORMERS_FAILS]
WITH_PROCESSOR = [t for t in CANDIDATES if t not in NO_PROCESSOR and t not in ANSWERS_NOTHING]


def test_the_table_names_candidates_only():
    assert set(NO_PROCESSOR) | set(ANSWERS_NOTHING) <= set(CANDIDATES), set(NO_PROCESSOR) - set(CANDIDATES)


def _image():
    return Image.new("RGB", (64, 48), (200, 30, 40))


def _encode(processor, prompts, images, model, **asked):
    """The processor's inputs: one image list per prompt where it takes that, else one flat list; token types where
    the model takes them."""
    takes = "mm_token_type_ids" in inspect.signature(model.forward).parameters
    if takes and "mm_token_type_ids" in processor.model_input_names:
        asked["return_mm_token_type_ids"] = True
    try:
        return processor(images=[[im] for im in images], text=prompts, return_tensors="pt", padding=True, **asked)
    except (ValueError, TypeError, IndexError):
        return processor(images=images, text=prompts, return_tensors="pt", padding=True, **asked)


def _transformers_answer(model, processor, prompt, image, max_new_tokens):
    """transformers' own greedy generate on the processor's inputs, cut at the first end-of-sequence token. A prompt
    the processor's defaults encode with two BOS tokens (mllama's processor writes one and its tokenizer adds another)
    is encoded without the tokenizer's, as Llama 3.2 Vision's model card does (add_special_tokens=False)."""
    enc = _encode(processor, [prompt], [image], model)
    if enc["input_ids"][0].tolist().count(processor.tokenizer.bos_token_id) > 1:
        enc = _encode(processor, [prompt], [image], model, add_special_tokens=False)
    enc.pop("labels", None)  # PaliGemma's processor makes training labels too
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    # an encoder-decoder's output is the decoder's: its start token, then the answer (Florence-2's)
    new = out[0, 1:].tolist() if model.config.is_encoder_decoder else out[0, enc["input_ids"].shape[1]:].tolist()
    new = next((new[:i] for i, t in enumerate(new) if t in eos), new)
    return processor.tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("model_type", sorted(NO_PROCESSOR))
def test_a_type_listed_without_a_processor_fails(model_type):
    config = tiny_config(model_type)
    with pytest.raises(Exception):  # noqa: B017  (NoTinyProcessor, or the model refuses the processor's inputs)
        processor = tiny_processor(model_type, config)
        _transformers_answer(tiny_any(model_type), processor, build_prompt(processor, QUESTION), _image(), 2)


@pytest.mark.parametrize("model_type", sorted(ANSWERS_NOTHING))
def test_a_type_listed_as_answering_nothing_does(model_type):
    processor = tiny_processor(model_type, tiny_config(model_type))
    assert _transformers_answer(tiny_any(model_type), processor, build_prompt(processor, QUESTION), _image(), 4) == ""


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """model_type -> (base folder, merged folder, transformers' model and processor of the merged folder)."""
    made = {}

    def get(model_type):
        if model_type not in made:
            root = tmp_path_factory.mktemp(model_type)
            processor = tiny_processor(model_type, tiny_config(model_type))
            model = tiny_any(model_type)
            model.save_pretrained(root / "base")
            processor.save_pretrained(root / "base")
            perturb_(model).save_pretrained(root / "tuned")
            processor.image_processor.image_mean = OTHER_MEAN
            processor.save_pretrained(root / "tuned")
            out = merge({"merge_method": "linear",
                         "models": [{"model": str(root / "base"), "parameters": {"weight": 0.5}},
                                    {"model": str(root / "tuned"), "parameters": {"weight": 0.5}}]},
                        root / "out", quiet=True)
            theirs = model_class(model_type).from_pretrained(out, dtype=torch.float32).eval()
            made[model_type] = root / "base", out, theirs, T.AutoProcessor.from_pretrained(out)
        return made[model_type]

    return get


@pytest.mark.parametrize("model_type", WITH_PROCESSOR)
def test_the_merged_output_holds_the_bases_processor(model_type, merged):
    base, out, _, processor = merged(model_type)
    want = T.AutoProcessor.from_pretrained(base)
    assert type(processor) is type(want)
    assert list(processor.image_processor.image_mean) == list(want.image_processor.image_mean) != OTHER_MEAN
    assert processor.tokenizer.get_vocab() == want.tokenizer.get_vocab()


@pytest.mark.parametrize("model_type", WITH_PROCESSOR)
def test_generate_answers_as_transformers_does(model_type, merged):
    _, out, model, processor = merged(model_type)
    ours = generate(out, _image(), QUESTION, max_new_tokens=4)
    assert ours.strip(), "an empty answer: the comparison is void"
    assert ours == _transformers_answer(model, processor, build_prompt(processor, QUESTION), _image(), 4)


@pytest.mark.parametrize("model_type", WITH_PROCESSOR)
def test_eval_answers_as_transformers_does(model_type, merged, tmp_path):
    _, out, model, processor = merged(model_type)
    vqa = eval_data.vqav2(tmp_path / "vqa", n=2)
    evaluate(out, "vqav2", **vqa, out=tmp_path / "eval", batch_size=2, max_new_tokens=3, progress=False)
    samples = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2
    for s in samples:
        image = Image.open(vqa["images"] / s["image"]).convert("RGB")
        assert s["raw"] == _transformers_answer(model, processor, s["prompt"], image, 3), s


def test_a_processor_that_writes_the_bos_itself_gets_no_second_one():
    """IDEFICS' processor builds each prompt from the BOS and passes add_special_tokens on to its tokenizer: the
    prompts the runner encodes hold the BOS once, exactly as the processor's own defaults encode them."""
    from mmmerge.eval.generate import Generator

    processor = tiny_processor("idefics", tiny_config("idefics"))
    processor.tokenizer.padding_side = "left"
    prompts = [build_prompt(processor, q) for q in (QUESTION, "is there a cat ?")]
    ours = Generator(tiny_any("idefics"), processor).encode(prompts, [_image(), _image()])
    theirs = processor(images=[[_image()], [_image()]], text=prompts, return_tensors="pt", padding=True)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    bos = processor.tokenizer.bos_token_id
    assert [row[mask.bool()].tolist().count(bos) for row, mask in zip(ours["input_ids"], ours["attention_mask"])] == \
        [1, 1]


def test_an_encoder_decoder_answers_as_transformers_does(tmp_path):
    """Florence-2 generates with a BART decoder: its output holds the decoder's tokens, not the prompt, and its
    processor writes the image placeholders itself (a prompt holding one is an image too many). The tiny model
    repeats its decoder's start token (its embeddings are tied), the end-of-sequence token by default: the decoder
    starts at a word here so that the answer is not empty."""
    processor = tiny_processor("florence2", tiny_config("florence2"))
    model = tiny_any("florence2")
    model.generation_config.decoder_start_token_id = processor.tokenizer.convert_tokens_to_ids("dog")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    ours = generate(tmp_path, _image(), QUESTION, max_new_tokens=4)
    assert ours.strip(), "an empty answer: the comparison is void"
    assert ours == _transformers_answer(model, processor, QUESTION, _image(), 4)


def test_generate_through_the_command(merged, tmp_path):
    """`mmmerge generate` prints what the API answers (one CLI check)."""
    from cli_run import run

    _, out, _, _ = merged("llava")
    _image().save(tmp_path / "red.png")
    r = run("generate", out, "--image", tmp_path / "red.png", "--prompt", QUESTION, "--max-new-tokens", 4)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == generate(out, tmp_path / "red.png", QUESTION, max_new_tokens=4).strip()


@pytest.mark.parametrize("text_only_first", [False, True], ids=["vlm-first", "text-only-first"])
def test_an_lm_and_text_only_merge_holds_the_vlms_processor(merged, tmp_path, text_only_first):
    """The language model of a VLM merged with a text-only causal LM that has a tokenizer of its own: the output's
    side files are the VLM's, whichever model the recipe names first, and it generates as transformers does."""
    from mmmerge.adapters import open_checkpoint
    from mmmerge.adapters.hf_export import build_config
    from mmmerge.adapters.hf_export import model_class as class_named
    from tiny_tokenizer import make_tokenizer

    base, _, _, _ = merged("llava")
    lang = open_checkpoint(base).component("language")
    torch.manual_seed(7)
    class_named(lang.arch)._from_config(build_config(lang)).save_pretrained(tmp_path / "llm")
    make_tokenizer(tmp_path / "llm")
    models = [{"model": str(base), "parameters": {"weight": 0.5}},
              {"model": str(tmp_path / "llm"), "parameters": {"weight": 0.5}}]
    out = merge({"merge_method": "linear", "models": models[::-1] if text_only_first else models},
                tmp_path / "out", quiet=True)
    got, want = T.AutoProcessor.from_pretrained(out), T.AutoProcessor.from_pretrained(base)
    assert type(got) is type(want) and got.tokenizer.get_vocab() == want.tokenizer.get_vocab()
    model = model_class("llava").from_pretrained(out, dtype=torch.float32).eval()
    ours = generate(out, _image(), QUESTION, max_new_tokens=4)
    assert ours == _transformers_answer(model, got, build_prompt(got, QUESTION), _image(), 4)
