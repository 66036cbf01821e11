"""`evaluate` over every major image-text-to-text family, each through its own processor and chat template.

Tiny random checkpoints with real processors (tests/tiny_vlm_processors.py): answers at batch size 1 equal those
at batch size 4 (Gemma 3, SmolVLM and mllama processors need one image list per prompt), a templated
prompt holds one BOS, and a processor's refusal is one line naming the model folder.
"""

import json
import shutil

import pytest
from PIL import Image

import eval_data
from mmmerge import evaluate
from mmmerge.errors import MMMergeError
from mmmerge.eval import get_task
from mmmerge.eval.generate import (Generator, ProcessorError, adds_special_tokens, build_prompt, load_model,
                                   prompt_lengths)
from tiny_vlm_processors import BUILDERS, build_tiny_vlm

try:
    import num2words  # noqa: F401  (SmolVLM's processor needs it; in the `test` extra)
    HAS_NUM2WORDS = True
except ImportError:
    HAS_NUM2WORDS = False
# Facts of the fixtures' processors (examples/tiny_family_checkpoints.py), each checked below both ways:
# PaliGemma's processor (no chat template) writes the BOS itself, after the image tokens: its prompt text holds none;
PROCESSOR_WRITES_BOS = {"paligemma"}
# these chat templates write the BOS that their tokenizer adds too: tokenizing the rendered text naively doubles it.
TEMPLATE_AND_TOKENIZER_ADD_BOS = {"gemma3", "idefics3", "mllama", "mistral3", "aya_vision"}
FAMILIES = [pytest.param(name, marks=pytest.mark.skipif(name == "smolvlm" and not HAS_NUM2WORDS,
                                                        reason="SmolVLMProcessor needs num2words"))
            for name in BUILDERS]


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    """Six questions on three images of different shapes (batches of 4 and 2 at batch size 4): families that
    tile or resize by shape give the rows of a batch different numbers of image tokens."""
    files = eval_data.vqav2(tmp_path_factory.mktemp("vqav2"), n=6)
    for i, path in enumerate(sorted(files["images"].iterdir())):
        eval_data.image(path, 1000 + i, size=[(40, 48), (64, 32), (32, 60)][i % 3])
    return files


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    name = request.param
    path = build_tiny_vlm(name, tmp_path_factory.mktemp(name))
    model, processor = load_model(path, "cpu", progress=False)
    return name, path, model, processor


def images(vqa, n):
    files = sorted(vqa["images"].iterdir())
    return [Image.open(files[i % len(files)]).convert("RGB") for i in range(n)]


def samples(out):
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_answers_do_not_depend_on_batch_size(family, vqa, tmp_path):
    name, path, _, processor = family
    m1 = evaluate(path, "vqav2", **vqa, out=tmp_path / "b1", batch_size=1, max_new_tokens=4, progress=False)
    m4 = evaluate(path, "vqav2", **vqa, out=tmp_path / "b4", batch_size=4, max_new_tokens=4, progress=False)
    s1, s4 = samples(tmp_path / "b1"), samples(tmp_path / "b4")
    assert m1 == m4
    assert (tmp_path / "b1" / "predictions.json").read_text() == (tmp_path / "b4" / "predictions.json").read_text()
    assert [s["raw"] for s in s1] == [s["raw"] for s in s4]
    assert len({s["raw"] for s in s1}) > 1, "the model says one thing to every question: the comparison is void"
    # The family's own prompt format: its chat template (PaliGemma has none: `<image>` and the prefix).
    text = get_task("vqav2").prompt.replace("{question}", s1[0]["question"])
    if processor.chat_template:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        assert s1[0]["prompt"] == processor.apply_chat_template(messages, add_generation_prompt=True)
    else:
        assert s1[0]["prompt"] == processor.image_token + text


def test_templated_prompt_holds_one_bos(family, vqa):
    name, path, model, processor = family
    tok = processor.tokenizer
    prompts = [build_prompt(processor, q) for q in eval_data.QUESTIONS[:3]]
    gen = Generator(model, processor, name=path)
    enc = gen.encode(prompts, images(vqa, 3))
    assert enc["input_ids"].shape[0] == 3 and gen.per_prompt_images
    bos = tok.bos_token_id
    for ids, mask in zip(enc["input_ids"], enc["attention_mask"]):
        ids = ids[mask.bool()].tolist()  # pad tokens aside
        if bos is not None:
            assert ids.count(bos) == 1, tok.convert_ids_to_tokens(ids)[:8]
    # The prompt lengths the runner sorts by are counted the same way: the template's text, one BOS.
    special = adds_special_tokens(tok, prompts)
    counted = tok(prompts, add_special_tokens=special)["input_ids"]
    assert prompt_lengths(processor, prompts) == [len(ids) for ids in counted]
    if bos is not None:
        in_text = 0 if name in PROCESSOR_WRITES_BOS else 1
        assert [ids.count(bos) for ids in counted] == [in_text] * len(counted)
    # The hazard is real for the families whose template writes the BOS and whose tokenizer adds one too.
    doubled = bos is not None and prompts[0].startswith(tok.bos_token) and tok("x")["input_ids"][:1] == [bos]
    assert doubled == (name in TEMPLATE_AND_TOKENIZER_ADD_BOS)
    if doubled:
        naive = processor(images=[images(vqa, 1)], text=prompts[:1])["input_ids"][0]
        assert list(naive).count(bos) == 2


@pytest.mark.parametrize("name", ["gemma3", "llava"])
def test_flat_image_list_when_the_processor_takes_no_nested_one(name, vqa, tmp_path):
    """The layout is asked of the processor: one that refuses per-prompt lists gets one flat list."""
    model, processor = load_model(build_tiny_vlm(name, tmp_path / name), "cpu", progress=False)

    class FlatOnly:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, key):
            return getattr(self.inner, key)

        def __call__(self, images=None, **kw):
            if any(isinstance(im, list) for im in images):
                raise ValueError("nested image lists are not supported")
            return self.inner(images=images, **kw)

    prompts = [build_prompt(processor, q) for q in eval_data.QUESTIONS[:4]]
    ims = images(vqa, 4)
    nested = Generator(model, processor, max_new_tokens=4)
    flat = Generator(model, FlatOnly(processor), max_new_tokens=4)
    if name == "llava":  # takes both: the same answers either way
        assert flat(prompts, ims) == nested(prompts, ims) and nested.per_prompt_images and not flat.per_prompt_images
    else:  # Gemma 3 takes only per-prompt lists: a processor that takes neither is a one-line error
        with pytest.raises(ProcessorError, match=r"cannot encode the prompts with their images \(ValueError: nested"):
            flat(prompts, ims)


def test_processor_error_is_one_line(family, vqa, tmp_path):
    """An image placeholder in the prompt besides the template's: the processor refuses the batch."""
    name, path, _, processor = family
    with pytest.raises(ProcessorError) as err:
        evaluate(path, "vqav2", **vqa, out=tmp_path / "out", prompt="{question} " + processor.image_token,
                 batch_size=4, max_new_tokens=2, progress=False)
    message = str(err.value)
    assert isinstance(err.value, MMMergeError) and "\n" not in message and message.startswith(f"{path}: ")
    assert "cannot encode the prompts with their images" in message
    assert not (tmp_path / "out").exists()


def test_model_and_processor_that_disagree_is_one_line(vqa, tmp_path):
    path = build_tiny_vlm("gemma3", tmp_path / "gemma3")
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    config = json.loads((bad / "processor_config.json").read_text())
    config["image_seq_length"] += 1  # one soft token per image more than the vision tower gives
    (bad / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ProcessorError) as err:
        evaluate(bad, "vqav2", **vqa, out=tmp_path / "out", max_new_tokens=2, progress=False)
    assert str(err.value).startswith(f"{bad}: the model rejects the inputs its processor made (ValueError: Image")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_several_images_per_prompt(family, vqa):
    """A prompt with two images (MMMU's documents that show two) beside a prompt with one: every family's template
    takes one placeholder per image, and the answers equal those of each prompt alone."""
    _, _, model, processor = family
    gen = Generator(model, processor, max_new_tokens=3)
    ims = images(vqa, 3)
    two, one = build_prompt(processor, "what differs?", 2), build_prompt(processor, "what is it?", 1)
    assert gen([two, one], [ims[:2], [ims[2]]]) == [gen([two], [ims[:2]])[0], gen([one], [[ims[2]]])[0]]
