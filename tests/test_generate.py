"""`mmmerge generate` and `mmmerge.generate`: one answer, through the model's own processor and chat template,
equal to what transformers' own chat path (`apply_chat_template(..., tokenize=True)` + greedy `generate`) gives."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import eval_data
import mmmerge
from cli_run import one_line_error, run
from tiny_vlm_processors import build_tiny_vlm

QUESTION = "what is the color of the dog ?"


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    return eval_data.image(tmp_path_factory.mktemp("img") / "dog.jpg", 7)


def transformers_answer(path, image_path, prompt, max_new_tokens):
    """The family's answer as transformers' own multimodal chat path computes it (PaliGemma: no template)."""
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    image = Image.open(image_path).convert("RGB")
    if processor.chat_template:
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
    else:
        inputs = processor(images=image, text=processor.image_token + prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", ["llava", "gemma3", "qwen2_vl", "paligemma"])
def test_answer_equals_transformers_chat_path(family, picture, tmp_path):
    path = build_tiny_vlm(family, tmp_path / family)
    ours = mmmerge.generate(path, picture, QUESTION, max_new_tokens=6)
    assert ours and ours == transformers_answer(path, picture, QUESTION, 6)
    assert mmmerge.generate(path, Image.open(picture), QUESTION, max_new_tokens=6) == ours  # a PIL image too


def test_command_prints_the_answer_and_refuses_bad_input(picture, tmp_path):
    path = build_tiny_vlm("llava", tmp_path / "llava")
    r = run("generate", path, "--image", picture, "--prompt", QUESTION, "--max-new-tokens", 5)
    assert r.returncode == 0, r.stderr
    assert r.stdout == mmmerge.generate(path, picture, QUESTION, max_new_tokens=5) + "\n"
    assert "Loading weights" not in r.stderr
    one_line_error(run("generate", path, "--image", tmp_path / "nope.jpg", "--prompt", "hi"), "nope.jpg",
                   "no such image")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    one_line_error(run("generate", path, "--image", tmp_path / "bad.jpg", "--prompt", "hi"), "bad.jpg", "cannot read")
    one_line_error(run("generate", tmp_path / "none", "--image", picture, "--prompt", "hi"), "no such model folder")


def test_an_instruction_goes_after_the_prompt_as_transformers_would_see_it(picture, tmp_path):
    path = build_tiny_vlm("llava", tmp_path / "llava")
    instruction = "Answer the question using a single word or phrase."
    ours = mmmerge.generate(path, picture, QUESTION, instruction=instruction, max_new_tokens=6)
    assert ours == transformers_answer(path, picture, f"{QUESTION}\n{instruction}", 6)
    assert mmmerge.generate(path, picture, QUESTION, max_new_tokens=6) == transformers_answer(path, picture, QUESTION, 6)


def test_task_asks_as_eval_does(picture, tmp_path):
    """With `task`, the answer is eval's raw answer to the same question (its instruction, its answer end)."""
    import json

    import eval_data

    path = build_tiny_vlm("llava", tmp_path / "llava")
    data = eval_data.jsonl(tmp_path / "data", n=1)
    question = json.loads(data["questions"].read_text())
    mmmerge.evaluate(path, "jsonl", questions=data["questions"], out=tmp_path / "eval", max_new_tokens=8,
                     progress=False)
    sample = json.loads((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()[0])
    image = data["questions"].parent / question["image"]
    ours = mmmerge.generate(path, image, question["question"], task="jsonl", max_new_tokens=8)
    assert ours == sample["raw"]

    r = run("generate", path, "--image", image, "--prompt", question["question"], "--task", "jsonl",
            "--max-new-tokens", 8)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ours + "\n"
    assert r.stderr.startswith("prompt: ") and "Answer the question using a single word or phrase." in r.stderr
    assert "jsonl task" in r.stderr
    r = run("generate", path, "--image", image, "--prompt", question["question"], "--task", "jsonl",
            "--instruction", "", "--max-new-tokens", 8)
    assert r.returncode == 0 and "prompt:" not in r.stderr, r.stderr


def test_an_empty_answer_is_named_on_stderr(picture, tmp_path):
    """A model whose every token ends the answer (its generation config calls each one end-of-sequence)."""
    import json

    path = build_tiny_vlm("llava", tmp_path / "llava")
    config = json.loads((path / "generation_config.json").read_text())
    vocab = json.loads((path / "config.json").read_text())["text_config"]["vocab_size"]
    config["eos_token_id"] = list(range(vocab))
    (path / "generation_config.json").write_text(json.dumps(config))
    r = run("generate", path, "--image", picture, "--prompt", QUESTION)
    assert r.returncode == 0 and r.stdout == "\n"
    assert r.stderr.startswith("note: the model answered nothing") and r.stderr.count("\n") == 1, r.stderr
    r = run("generate", build_tiny_vlm("llava", tmp_path / "plain"), "--image", picture, "--prompt", QUESTION,
            "--max-new-tokens", 4)
    assert r.returncode == 0 and r.stdout.strip() and "note:" not in r.stderr
