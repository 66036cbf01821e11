"""Task readers on files in the published layouts, their prompts, answer rules and error messages."""

import json

import pytest

import eval_data
from mmmerge.errors import UnreadableFileError
from mmmerge.eval import metrics as M
from mmmerge.eval.tasks import EvalDataError, get_task, read_task


def test_vqav2_reader(tmp_path):
    files = eval_data.vqav2(tmp_path, n=6)
    task = get_task("vqav2")
    samples = read_task(task, **files)
    assert [s.question_id for s in samples] == [1000000, 1000001, 1001000, 1001001, 1002000, 1002001]
    assert samples[2].image == files["images"] / "COCO_val2014_000000001001.jpg"
    assert samples[0].target == ["yes"] * 7 + ["no"] * 3
    assert samples[1].info == {"answer_type": "number", "question_type": "how many", "order": 1}
    assert task.prompt.format(question="what ?") == "what ?\nAnswer the question using a single word or phrase."
    assert task.answer("Two.") == "2"  # EvalAI's processor, as in LLaVA's VQAv2 submission files
    assert task.score("2", samples[1]) == pytest.approx(1.0)
    assert len(read_task(task, **files, limit=3)) == 3


def test_vqav2_test_split_without_annotations(tmp_path):
    files = eval_data.vqav2(tmp_path, n=2, subtype="test2015")
    samples = read_task(get_task("vqav2"), files["questions"], None, files["images"])
    assert samples[0].image.name == "COCO_test2015_000000001000.jpg" and samples[0].target is None
    assert "evaluation server" in get_task("vqav2").metrics(samples, ["x", "y"], [None, None])["note"]


def test_vqav2_metrics_follow_annotation_order(tmp_path):
    files = eval_data.vqav2(tmp_path, n=6)
    task = get_task("vqav2")
    samples = read_task(task, **files)
    answers = ["yes", "2", "3", "no", "two", "1"]
    scores = [task.score(a, s) for a, s in zip(answers, samples)]
    rep = task.metrics(samples[::-1], answers[::-1], scores[::-1])  # given in another order: same report
    assert rep == M.vqa_aggregate(scores, [s.info["answer_type"] for s in samples],
                                  [s.info["question_type"] for s in samples])
    # by hand: yes (7 yes) -> 1; 2 (4x"2" + 2x"two" -> 6) -> 1; 3 (4) -> 1; no (3) -> 0.9; two -> 1; 1 -> 0
    assert rep["overall"] == pytest.approx(round(100 * 4.9 / 6, 2))
    assert rep["perAnswerType"] == {"yes/no": 95.0, "number": 75.0}
    assert list(rep["perAnswerType"]) == ["yes/no", "number"]  # the order of the annotation file


def test_textvqa_reader(tmp_path):
    files = eval_data.textvqa(tmp_path)
    task = get_task("textvqa")
    samples = read_task(task, **files)
    assert samples[1].question_id == 34603 and samples[1].image.parent == files["images"]
    assert task.score("STOP", samples[1]) == 1.0 and task.score("coca cola", samples[0]) == 1.0
    assert task.metrics(samples, ["stop"] * 4, [0.0, 1.0, 0.0, 1.0]) == {"accuracy": 50.0, "questions": 4}


def test_gqa_reader_keeps_balanced_questions(tmp_path):
    files = eval_data.gqa(tmp_path, n=5)
    task = get_task("gqa")
    samples = read_task(task, **files)
    assert [s.question_id for s in samples] == ["20000000", "20000001", "20000002", "20000003"]
    answers = [task.answer(r) for r in ["Yes.", "Dog", "no", "cat"]]
    assert answers == ["yes", "dog", "no", "cat"]
    rep = task.metrics(samples, answers, [task.score(a, s) for a, s in zip(answers, samples)])
    assert (rep["accuracy"], rep["binary"], rep["open"]) == (50.0, 50.0, 50.0)


def test_pope_reader_takes_category_from_file_name(tmp_path):
    files = eval_data.pope(tmp_path)
    task = get_task("pope")
    samples = read_task(task, **files)
    assert {s.info["category"] for s in samples} == {"adversarial"} and samples[1].target == "no"
    assert samples[0].question == "Is there a dog in the image?"
    assert [task.answer(r) for r in ["Yes, there is.", "No.", " no"]] == ["yes", "no", "no"]


def test_pope_per_category(tmp_path):
    files = eval_data.pope(tmp_path / "a", n=4, category="random")
    more = eval_data.pope(tmp_path / "b", n=4, category="popular")
    merged = tmp_path / "llava_pope_test.jsonl"
    rows = [dict(json.loads(x), category="random") for x in files["questions"].read_text().splitlines()]
    rows += [dict(json.loads(x), category="popular", question_id=10 + i)
             for i, x in enumerate(more["questions"].read_text().splitlines())]
    merged.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("pope")
    samples = read_task(task, merged, None, files["images"])
    answers = ["yes"] * 8
    rep = task.metrics(samples, answers, [task.score(a, s) for a, s in zip(answers, samples)])
    assert rep["accuracy"] == 50.0 and rep["yes_ratio"] == 100.0 and rep["recall"] == 100.0
    assert set(rep["perCategory"]) == {"popular", "random"} and rep["perCategory"]["random"]["precision"] == 50.0


def test_scienceqa_reader_img_test_subset(tmp_path):
    files = eval_data.scienceqa(tmp_path)
    task = get_task("scienceqa")
    samples = read_task(task, **files)
    assert [s.question_id for s in samples] == ["1", "2"]
    assert samples[0].question == "Context: Look at the picture.\nWhich animal is this?\nA. dog\nB. cat"
    assert samples[1].question == "Which is a city?\nA. Rome\nB. Nile\nC. Alps"
    assert task.prompt.endswith("Answer with the option's letter from the given choices directly.")
    assert [task.score(a, s) for a, s in zip(["B", "D"], samples)] == [1.0, 0.0]  # D is not one of 3 choices


def test_jsonl_reader(tmp_path):
    files = eval_data.jsonl(tmp_path)
    task = get_task("jsonl")
    samples = read_task(task, **files)
    assert samples[0].image == tmp_path / "img" / "0.png" and samples[0].target == ["two"]
    assert task.score("Two", samples[0]) == 1.0 and task.score("2", samples[0]) == 1.0  # VQA normalisation
    assert task.score("red.", samples[1]) == 1.0 and task.score("blue", samples[1]) == 0.0
    ten = samples[0].__class__(0, samples[0].image, "q", ["yes"] * 2 + ["no"] * 8)
    assert task.score("yes", ten) == pytest.approx(0.6)  # ten answers: the VQA accuracy


# ------------------------------------------------------------------------------------------- bad input
def test_question_without_annotation(tmp_path):
    files = eval_data.vqav2(tmp_path, n=4)
    ann = json.loads(files["annotations"].read_text())
    del ann["annotations"][2]
    files["annotations"].write_text(json.dumps(ann))
    with pytest.raises(EvalDataError, match=r"annotations.json: question 1001000 has no annotation"):
        read_task(get_task("vqav2"), **files)


def test_missing_image(tmp_path):
    files = eval_data.vqav2(tmp_path, n=4)
    (files["images"] / "COCO_val2014_000000001001.jpg").unlink()
    with pytest.raises(EvalDataError, match=r"questions.json: question 1001000: image not found: .*000000001001.jpg"):
        read_task(get_task("vqav2"), **files)


def test_malformed_json(tmp_path):
    files = eval_data.vqav2(tmp_path, n=2)
    files["questions"].write_text('{"questions": [')
    with pytest.raises(UnreadableFileError, match=r"questions.json: not valid JSON"):
        read_task(get_task("vqav2"), **files)
    files = eval_data.pope(tmp_path, n=2)
    files["questions"].write_text('{"question_id": 1}\n{oops\n')
    with pytest.raises(EvalDataError, match=r"coco_pope_adversarial.json: line 2: not valid JSON"):
        read_task(get_task("pope"), **files)


def test_missing_field_and_unknown_task(tmp_path):
    files = eval_data.jsonl(tmp_path, n=2)
    files["questions"].write_text('{"question_id": 7, "image": "img/0.png"}\n')
    with pytest.raises(EvalDataError, match=r"data.jsonl: question 7: missing field 'question'"):
        read_task(get_task("jsonl"), **files)
    with pytest.raises(EvalDataError, match="unknown task 'okvqa'"):
        get_task("okvqa")
