"""`mmmerge search` objectives on lmms-eval tasks read from JSONL documents: the searched objective is what
`mmmerge eval` of the best merge gives on the same dev documents, and what `mmmerge score` reads from its log."""

import json

import pytest
import yaml

import eval_data
import lmms_parquet
from cli_run import one_line_error, run
from make_tiny_models import make_finetune
from tiny_llava import build_tiny_llava
from mmmerge import merge
from mmmerge.eval import evaluate
from mmmerge.eval.lmms.task import LmmsEvalTask
from mmmerge.searching import search
from mmmerge.searching.spec import load_spec

NEVER = "never said"


def write_docs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A base and two nearby "fine-tunes"; TextVQA and GQA documents in lmms-eval's schema whose gold answer is,
    for every other document, what the base says: merges near the base score above 0."""
    root = tmp_path_factory.mktemp("search_lmms")
    build_tiny_llava(root / "base", seed=1)
    for name, seed in (("a", 2), ("b", 3)):
        make_finetune(root / "base", root / name, seed, scale=0.05)
    questions = eval_data.QUESTIONS[:6]
    for i in range(len(questions)):
        eval_data.image(root / "images" / f"{i}.png", i)
    textvqa = [{"question_id": 10 + i, "question": q, "image": f"images/{i}.png", "image_id": str(i),
                "answers": [NEVER] * 10} for i, q in enumerate(questions)]
    gqa = [{"id": f"g{i}", "question": q, "image": f"images/{i}.png", "imageId": str(i), "answer": NEVER}
           for i, q in enumerate(questions)]
    for name, task, docs in (("textvqa.jsonl", "textvqa_val", textvqa), ("gqa.jsonl", "gqa", gqa)):
        write_docs(root / name, docs)
        evaluate(str(root / "base"), LmmsEvalTask(task), questions=root / name, out=root / f"base-{task}",
                 max_new_tokens=2, progress=False)
        said = [json.loads(x)["answer"] for x in (root / f"base-{task}" / "samples.jsonl").read_text().splitlines()]
        for i, d in enumerate(docs[::2]):
            d.update(answers=[said[2 * i]] * 10) if task == "textvqa_val" else d.update(answer=said[2 * i])
        write_docs(root / name, docs)
    return root


def test_searched_objective_equals_eval_of_the_best_merge(world, tmp_path):
    spec = {"merge_method": "task_arithmetic", "base_model": "base",
            "models": [{"model": m, "parameters": {"weight": {"search": [0.0, 0.05]}}} for m in ("a", "b")],
            "search": {"trials": 3, "objective": "score", "max_new_tokens": 2, "sampler": "random",
                       "tasks": [{"task": "textvqa_val", "questions": "textvqa.jsonl"},
                                 {"task": "lmms-eval:gqa", "questions": "gqa.jsonl"}]}}
    path = world / "spec.yml"
    path.write_text(yaml.safe_dump(spec))
    result = search(path, tmp_path / "out", quiet=True)
    merge(tmp_path / "out" / "best_recipe.yml", tmp_path / "merged", quiet=True)
    headlines = {}
    for task, file in (("textvqa_val", "textvqa.jsonl"), ("gqa", "gqa.jsonl")):
        out = tmp_path / f"eval-{task}"
        metrics = evaluate(str(tmp_path / "merged"), LmmsEvalTask(task), questions=world / file, out=out,
                           max_new_tokens=2, progress=False)
        headlines[task] = metrics["exact_match"]
        r = run("score", "--task", task, out / f"lmms_samples_{task}.jsonl", "--json")  # its log, rescored
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["headline"] == pytest.approx(headlines[task], abs=1e-12)
    assert result.dev_scores == pytest.approx(headlines, abs=1e-12)
    assert result.best_value == pytest.approx(100 * sum(headlines.values()) / 2, abs=1e-10)  # in percent
    assert 0 < result.best_value < 100


def test_unknown_tasks_and_bad_documents_are_one_line(world, tmp_path):
    spec = {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": {"search": [0.0, 1.0]}}}
                                                 for m in ("a", "b")],
            "search": {"trials": 1, "tasks": [{"task": "mmbench_cn", "questions": "textvqa.jsonl"}]}}
    path = world / "bad.yml"
    path.write_text(yaml.safe_dump(spec))
    one_line_error(run("search", path, "--out", tmp_path / "o"), "unknown task 'mmbench_cn'", "mmstar")
    write_docs(world / "mme.jsonl", [{"question_id": "x.png", "category": "color", "question": "q",
                                      "image": "images/0.png", "answer": "Yes"}])
    spec["search"]["tasks"] = [{"task": "mme", "questions": "mme.jsonl"}]
    path.write_text(yaml.safe_dump(spec))
    one_line_error(run("search", path, "--out", tmp_path / "o"), "mme.jsonl: line 1", "pairs")
    write_docs(world / "noimage.jsonl", [{"question": "q", "answer": "a"}])
    spec["search"]["tasks"] = [{"task": "lmms-eval:gqa", "questions": "noimage.jsonl"}]
    path.write_text(yaml.safe_dump(spec))
    one_line_error(run("search", path, "--out", tmp_path / "o"), "noimage.jsonl: line 1", "`image`")
    assert not (tmp_path / "o").exists()


def test_the_score_objective_weighs_units_alike():
    """VQAv2 in percent, MME in points out of 2000, TextVQA as a fraction: each counts as its percent."""
    from types import SimpleNamespace

    from mmmerge.eval.tasks import get_task
    from mmmerge.searching.objectives import mean_percent

    splits = [SimpleNamespace(task=t) for t in (get_task("vqav2"), LmmsEvalTask("mme"), LmmsEvalTask("textvqa_val"))]
    assert mean_percent(splits, {"vqav2": 60.0, "mme": 1000.0, "textvqa_val": 0.3}) == pytest.approx((60 + 50 + 30) / 3)


def parquet_rows(folder):
    """The documents of a tiny lmms-lab folder, in doc_id order (shards by name)."""
    import pyarrow.parquet as pq

    return [row for shard in sorted(folder.rglob("*.parquet")) for row in pq.read_table(shard).to_pylist()]


def test_search_on_parquet_folders_split_by_question_id(world, tmp_path):
    """`data:` names an lmms-eval task's parquet folder, split by the dataset's question id (MME's pairs on one
    side); each split's score is what `evaluate` of the best merge gives on a folder of just those documents."""
    lmms_parquet.mme(tmp_path / "MME")
    textvqa = [{"question_id": f"t{i}", "question": q, "answers": ["never said"] * 10, "image": lmms_parquet.png(i),
                "image_id": str(i)} for i, q in enumerate(eval_data.QUESTIONS[:6])]
    lmms_parquet.write(tmp_path / "TextVQA", "data", "validation", textvqa)
    evaluate(str(world / "base"), "textvqa_val", data=tmp_path / "TextVQA", out=tmp_path / "base", max_new_tokens=2,
             progress=False)
    for doc, said in zip(textvqa[::2], [json.loads(x)["answer"] for x in
                                        (tmp_path / "base" / "samples.jsonl").read_text().splitlines()][::2]):
        doc["answers"] = [said] * 10  # every other gold is the base's answer: merges near it score above 0
    lmms_parquet.write(tmp_path / "TextVQA", "data", "validation", textvqa)
    spec = {"merge_method": "task_arithmetic", "base_model": str(world / "base"),
            "models": [{"model": str(world / m), "parameters": {"weight": {"search": [0.0, 0.05]}}} for m in "ab"],
            "search": {"trials": 2, "max_new_tokens": 2, "sampler": "random",
                       "tasks": [{"task": "mme", "data": "MME", "split": 0.5},
                                 {"task": "textvqa_val", "data": "TextVQA", "split": 0.5}]}}
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(spec))
    result = search(path, tmp_path / "out", quiet=True)
    merge(tmp_path / "out" / "best_recipe.yml", tmp_path / "merged", quiet=True)
    for split in load_spec(path).splits:  # the dev and test documents, as the search split them
        task, folder = split.task.name, {"mme": "MME", "textvqa_val": "TextVQA"}[split.task.name]
        rows = parquet_rows(tmp_path / folder)
        dev = {s.question_id for s in split.dev}
        assert 0 < len(dev) < len(rows) and len(split.test) == len(rows) - len(dev)
        sides = {}
        for doc_id, row in enumerate(rows):
            sides.setdefault(row["question_id"], set()).add(doc_id in dev)
        assert all(len(side) == 1 for side in sides.values())  # MME's pairs share a question_id: one side each
        test = set(range(len(rows))) - dev
        for part, scores, ids in (("dev", result.dev_scores, dev), ("test", result.test_scores, test)):
            only = lmms_parquet.write(tmp_path / f"{task}-{part}", "data", split.task.source.split,
                                      [rows[i] for i in sorted(ids)])
            metrics = evaluate(str(tmp_path / "merged"), task, data=only, out=tmp_path / f"eval-{task}-{part}",
                               max_new_tokens=2, progress=False)
            assert scores[task] == pytest.approx(metrics[split.task.headline], abs=1e-12)
    assert result.dev_scores["textvqa_val"] + result.test_scores["textvqa_val"] > 0


@pytest.mark.parametrize("entry, needles", [
    ({"task": "mme", "data": "MME", "questions": "mme.jsonl"}, ("search.tasks[mme]", "questions", "data")),
    ({"task": "mme", "split": 0.5}, ("search.tasks[mme]", "give questions (files) or data")),
    ({"task": "mme", "data": "MME", "test": {"questions": "t.jsonl", "data": "MME"}}, ("test.questions",)),
    ({"task": "vqav2", "data": "MME"}, ("search.tasks[vqav2]", "`data` is an lmms-eval task's dataset")),
    ({"task": "mme", "data": "no/such/folder"}, ("no/such/folder", "no such folder")),
])
def test_bad_data_entries_are_one_line(world, tmp_path, entry, needles):
    lmms_parquet.mme(tmp_path / "MME")
    spec = {"merge_method": "linear", "models": [{"model": str(world / m), "parameters": {"weight": {"search": [0, 1]}}}
                                                 for m in "ab"], "search": {"trials": 1, "tasks": [entry]}}
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(spec))
    one_line_error(run("search", path, "--out", tmp_path / "o"), *needles)
    assert not (tmp_path / "o").exists()
