"""`eval` ends an answer where the answer ends (end-of-sequence, the end of its first line, the generation config's
stop strings), records each question's task fields, and shows its running score."""

import json
import re
import shutil

from PIL import Image

import eval_data
from mmmerge import evaluate
from mmmerge.eval.answer_end import answer_ended, cut_answer
from mmmerge.eval.generate import Generator, build_prompt, load_model


def samples(out):
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_rule_on_text():
    assert not answer_ended("\n\n  ", ["\n"]) and not answer_ended("red", ["\n"])
    assert answer_ended("\nred\nblue", ["\n"]) and answer_ended("red. Done", ["\n", "."])
    assert cut_answer("\n red car\nblue", ["\n"]) == "red car" and cut_answer(" red ", []) == "red"
    assert cut_answer("a. b\nc", ["\n", "."]) == "a"


def as_newline(text: str, word: str) -> str:
    """What a word-level tokenizer decodes when `word`'s token reads "\\n", cut by hand at the first line end."""
    body = " ".join("\n" if w == word else w for w in text.split(" ")).lstrip()
    return body.split("\n", 1)[0].strip()


def test_eval_stops_at_the_line_end(model_dir, vqa, tmp_path):
    """The same model with one of its words' tokens renamed "\\n": each answer is the old one cut at that word."""
    evaluate(model_dir, "vqav2", **vqa, out=tmp_path / "words", batch_size=4, max_new_tokens=8, progress=False)
    raws = [s["raw"] for s in samples(tmp_path / "words")]
    inner = [w for r in raws for w in r.split(" ")[1:] if not w.startswith("<")]
    word = max(set(inner), key=inner.count)  # a word answers go on past
    newline = tmp_path / "newline"
    shutil.copytree(model_dir, newline)
    tok = json.loads((newline / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {("\n" if k == word else k): v for k, v in tok["model"]["vocab"].items()}
    (newline / "tokenizer.json").write_text(json.dumps(tok))
    for batch_size in (1, 4):
        evaluate(newline, "vqav2", **vqa, out=tmp_path / f"b{batch_size}", batch_size=batch_size, max_new_tokens=8,
                 progress=False)
        cut = [s["raw"] for s in samples(tmp_path / f"b{batch_size}")]
        assert cut == [as_newline(r, word) for r in raws]
    assert sum(len(c) < len(r) for c, r in zip(cut, raws)) >= 2, "no answer was cut: the test would prove nothing"


def test_generation_config_stop_strings(model_dir, vqa):
    model, processor = load_model(model_dir, "cpu", progress=False)
    prompts = [build_prompt(processor, q) for q in eval_data.QUESTIONS[:4]]
    images = [Image.open(p).convert("RGB") for p in sorted(vqa["images"].iterdir())][:4]
    plain = Generator(model, processor, max_new_tokens=8)(prompts, images)
    words = [w for t in plain for w in t.split(" ")[1:]]
    stop = max(set(words), key=words.count)
    model.generation_config.stop_strings = [stop]
    stopped = Generator(model, processor, max_new_tokens=8)
    want = [t.split(f" {stop}", 1)[0] if f" {stop}" in t else t for t in plain]
    assert stopped(prompts, images) == want != plain
    assert [stopped([p], [im])[0] for p, im in zip(prompts, images)] == want  # row by row: the same


def test_samples_carry_the_task_fields_and_the_bar_its_score(model_dir, vqa, tmp_path, capsys):
    evaluate(model_dir, "vqav2", **vqa, out=tmp_path / "o", batch_size=3, max_new_tokens=4, progress=True)
    rows = samples(tmp_path / "o")
    annotations = {a["question_id"]: a for a in json.loads(vqa["annotations"].read_text())["annotations"]}
    for s in rows:
        a = annotations[s["question_id"]]
        assert (s["answer_type"], s["question_type"]) == (a["answer_type"], a["question_type"])
        assert "order" not in s
    shown = re.findall(r"score (\d+\.\d)% of (\d+)", capsys.readouterr().err)
    assert shown and shown[-1] == (f"{100 * sum(s['score'] for s in rows) / len(rows):.1f}", str(len(rows)))
    assert "Loading weights" not in capsys.readouterr().err
