"""`mmmerge eval` writes lmms-eval sample logs and a results JSON: `mmmerge score` on them gives the eval's own
headline (metrics.json is in percent, lmms-eval in fractions)."""

import json

import pytest

import eval_data
from cli_run import run
from mmmerge import evaluate
from mmmerge.eval import metrics as M
from mmmerge.eval.lmms.write import LOG_FORMS, RESULTS_FILE, SAMPLES_FILE, write_lmms_log
from mmmerge.eval.tasks import get_task, read_task
from test_eval_runner import read_out, regold

LMMS_NAME = {"textvqa": "textvqa_val", "gqa": "gqa", "pope": "pope", "scienceqa": "scienceqa_img"}


def score_cli(task, path):
    r = run("score", "--task", task, path, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("task", list(LMMS_NAME))
def test_score_of_the_written_log_equals_the_eval_headline(model_dir, task, tmp_path):
    files = getattr(eval_data, task)(tmp_path / "data")
    evaluate(model_dir, task, **files, out=tmp_path / "first", max_new_tokens=4, progress=False)
    regold(task, files, {p["question_id"]: p["answer"] for p in read_out(tmp_path / "first")[0]})
    metrics = evaluate(model_dir, task, **files, out=tmp_path / "out", max_new_tokens=4, progress=False)
    headline = json.loads((tmp_path / "out" / "run.json").read_text())["headline"]
    name = LMMS_NAME[task]
    log = tmp_path / "out" / SAMPLES_FILE.format(task=name)
    out = score_cli(name, log)
    assert out["headline"] == pytest.approx(metrics[headline] / 100, abs=1e-12)
    if task != "scienceqa":  # the tiny model names no option letter
        assert 0 < out["headline"] < 1
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert {f"{m},none": v for m, v in out["metrics"].items()}.items() <= results["results"][name].items()
    _, _, samples = read_out(tmp_path / "out")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["doc_id"] for x in lines] == list(range(len(samples)))
    assert [x["resps"] for x in lines] == [[[s["raw"]]] for s in samples]
    assert all({"doc", "target", "filtered_resps", "doc_hash", "prompt_hash", "target_hash", "input"} <= set(x)
               for x in lines)


def test_scienceqa_and_pope_answers_lmms_eval_would_read_otherwise(tmp_path):
    """Answers on which lmms-eval's own parse and the official one disagree ("b", "B.", "The answer is B."):
    the log's filtered answer is the official parse, so the score equals the official metrics."""
    files = eval_data.scienceqa(tmp_path / "sqa")
    task = get_task("scienceqa")
    samples = read_task(task, files["questions"], None, files["images"])
    for raws in (["B", "A"], ["b", "A."], ["The answer is B.", "B. Nile"], ["C", "A"]):
        answers = [task.answer(r) for r in raws]
        scores = [task.score(a, s) for a, s in zip(answers, samples)]
        official = task.metrics(samples, answers, scores)["accuracy"]
        assert write_lmms_log(task, samples, raws, raws, answers, scores, tmp_path, {"model": "m", "batch_size": 1,
                                                                                   "max_new_tokens": 4})
        out = score_cli("scienceqa_img", tmp_path / SAMPLES_FILE.format(task="scienceqa_img"))
        assert out["headline"] == pytest.approx(official / 100)
    pope = eval_data.pope(tmp_path / "pope")
    task = get_task("pope")
    samples = read_task(task, pope["questions"], None, pope["images"])
    raws = ["Yes.", "No, there is not", "NO", "Nope", "yes", "no"][:len(samples)]
    answers = [task.answer(r) for r in raws]
    scores = [task.score(a, s) for a, s in zip(answers, samples)]
    official = M.pope_metrics(answers, [s.target for s in samples])
    write_lmms_log(task, samples, raws, raws, answers, scores, tmp_path, {"model": "m", "batch_size": 1,
                                                                         "max_new_tokens": 4})
    out = score_cli("pope", tmp_path / SAMPLES_FILE.format(task="pope"))
    for ours, theirs in (("accuracy", "pope_accuracy"), ("f1", "pope_f1_score"), ("precision", "pope_precision")):
        assert out["metrics"][theirs] == pytest.approx(official[ours] / 100)


def test_tasks_without_an_lmms_eval_log(model_dir, vqa, tmp_path):
    """VQAv2 (lmms-eval's vqav2_val is none of the tasks `score` knows) and plain JSONL write no lmms-eval files."""
    assert set(LOG_FORMS) == set(LMMS_NAME)
    evaluate(model_dir, "vqav2", **vqa, out=tmp_path / "v", limit=2, max_new_tokens=2, progress=False)
    assert not list((tmp_path / "v").glob("lmms_*"))
