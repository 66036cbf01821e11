"""`mmmerge search` objectives on lmms-eval tasks read from JSONL documents: the searched objective is what
`mmmerge eval` of the best merge gives on the same dev documents, and what `mmmerge score` reads from its log."""

import json

import pytest
import yaml

import eval_data
from cli_run import one_line_error, run
from make_tiny_models import make_finetune
from tiny_llava import build_tiny_llava
from mmmerge import merge
from mmmerge.eval import evaluate
from mmmerge.eval.lmms.task import LmmsEvalTask
from mmmerge.searching import search

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
