"""`eval-compare` on lmms-eval runs: its results JSON and sample logs, alone or beside `mmmerge eval` folders,
paired by doc_id.

The logs are written here in lmms-eval 0.3.0's format: each line is the `example` dict of lmms_eval/evaluator.py
`evaluate` (doc_id, doc without images, target, arguments, resps, filtered_resps, doc/prompt/target hashes, then
`process_results`'s fields: for pope, lmms_eval/tasks/pope/utils.py `pope_process_results`, one object with a
`score` per metric) as lmms_eval/loggers/evaluation_tracker.py `save_results_samples` writes it to
`<output_path>/<model>/<date>_samples_<task>.jsonl`; the results file is `save_results_aggregated`'s
`<date>_results.json` ({"results": {task: {"alias", "metric,none", "metric_stderr,none"}}, ...}).
"""

import json
import random

import eval_data
from cli_run import one_line_error, run
from mmmerge import evaluate
from mmmerge.eval.stats import paired_test

DATE = "20260807_101112"
GOLD = ["yes", "no"] * 10


def pope_line(doc_id, answer):
    gold = GOLD[doc_id]
    score = float(answer == gold)
    row = {"question_id": f"q{doc_id}", "score": score, "prediction": answer, "ground_truth": gold}
    return {"doc_id": doc_id, "doc": {"question_id": f"q{doc_id}", "question": "Is there a dog?", "answer": gold,
                                      "image_source": f"img{doc_id}", "category": "adversarial" if doc_id % 3 else
                                      "random"},
            "target": gold, "arguments": {"0": "max_new_tokens"}, "resps": [[answer]], "filtered_resps": [answer],
            "doc_hash": "0" * 64, "prompt_hash": "1" * 64, "target_hash": "2" * 64,
            **{m: dict(row) for m in ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score",
                                      "pope_yes_ratio")}, "input": "Is there a dog?"}


def lmms_run(root, answers, *, f1=0.5, order=None):
    """An lmms-eval output folder: <root>/<model>/<date>_results.json and _samples_pope.jsonl."""
    folder = root / "liuhaotian__llava-v1.5-7b"
    folder.mkdir(parents=True)
    lines = [pope_line(i, a) for i, a in enumerate(answers)]
    (folder / f"{DATE}_samples_pope.jsonl").write_text(
        "".join(json.dumps(lines[i]) + "\n" for i in (order or range(len(lines)))))
    (folder / f"{DATE}_results.json").write_text(json.dumps({
        "results": {"pope": {"alias": "pope", "pope_accuracy,none": 0.7, "pope_accuracy_stderr,none": "N/A",
                             "pope_f1_score,none": f1, "pope_f1_score_stderr,none": "N/A"}},
        "config": {"model": "llava", "model_args": "pretrained=liuhaotian/llava-v1.5-7b"}, "date": DATE}))
    return root


def compared(*args):
    r = run("eval-compare", *args, "--resamples", 2000)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_two_lmms_eval_runs_are_paired_by_doc_id(tmp_path):
    rng = random.Random(0)
    a = [g if rng.random() < 0.8 else {"yes": "no", "no": "yes"}[g] for g in GOLD]
    b = [g if rng.random() < 0.5 else {"yes": "no", "no": "yes"}[g] for g in GOLD]
    order = list(range(len(GOLD)))
    rng.shuffle(order)  # lmms-eval's ranks append their documents in any order: pairs follow doc_id
    base = lmms_run(tmp_path / "base", a, f1=0.81)
    other = lmms_run(tmp_path / "other", b, f1=0.52, order=order)
    out = compared(base, other)
    assert "| base | pope | 0.81 |" in out and "| other | pope | 0.52 |" in out  # headline from the results file
    sa, sb = [float(x == g) for x, g in zip(a, GOLD)], [float(x == g) for x, g in zip(b, GOLD)]
    expected = paired_test(sb, sa, resamples=2000)
    assert f"{100 * expected.difference:+.1f} [{100 * expected.low:+.1f}, {100 * expected.high:+.1f}]" in out
    assert f"(n={len(GOLD)})" in out and "McNemar exact" in out
    by = compared(base, other, "--by", "category")
    assert "| adversarial |" in by and "| random |" in by


def test_one_samples_file_and_an_mmmerge_eval_folder(model_dir, tmp_path):
    files = eval_data.pope(tmp_path / "data")
    evaluate(model_dir, "pope", **files, out=tmp_path / "ours", max_new_tokens=4, progress=False)
    ours = [json.loads(x) for x in (tmp_path / "ours" / "lmms_samples_pope.jsonl").read_text().splitlines()]
    theirs = tmp_path / "lmms" / f"{DATE}_samples_pope.jsonl"  # a lone log (no results file): scored from its docs
    theirs.parent.mkdir()
    flipped = [dict(line, filtered_resps=[{"yes": "no", "no": "yes"}[line["filtered_resps"][0]]]) for line in ours]
    for line in flipped[::2]:
        for m in ("pope_accuracy", "pope_f1_score"):
            line[m] = dict(line[m], score=1.0 - line[m]["score"])
    theirs.write_text("".join(json.dumps(x) + "\n" for x in flipped[::2] + ours[1::2]))
    out = compared(tmp_path / "ours", theirs)
    mine = [x["pope_accuracy"]["score"] for x in ours]
    other = [1.0 - s if i % 2 == 0 else s for i, s in enumerate(mine)]
    expected = paired_test(other, mine, resamples=2000)
    assert f"{100 * expected.difference:+.1f} [" in out and f"(n={len(ours)})" in out
    assert expected.difference != 0


def test_bad_lmms_eval_logs_get_one_line(tmp_path):
    good = lmms_run(tmp_path / "good", GOLD)
    log = tmp_path / "x" / f"{DATE}_samples_pope.jsonl"
    log.parent.mkdir()
    lines = [pope_line(i, "yes") for i in range(4)]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines + [lines[1]]))
    one_line_error(run("eval-compare", good, log), "line 5", "doc_id 1 again")
    log.write_text(json.dumps({"doc": {}}) + "\n")
    one_line_error(run("eval-compare", good, log), "line 1", "doc_id")
    log.write_text("{not json\n")
    one_line_error(run("eval-compare", good, log), str(log))
    odd = tmp_path / "x" / "answers.jsonl"
    odd.write_text(json.dumps(pope_line(0, "yes")) + "\n")
    one_line_error(run("eval-compare", good, odd), "_samples_<task>.jsonl")
    log.write_text(json.dumps(pope_line(0, "yes")) + "\n")
    (tmp_path / "x" / f"{DATE}_results.json").write_text(json.dumps({"results": {"mme": {}}}))
    one_line_error(run("eval-compare", good, log), "no `results.pope`")
    (tmp_path / "x" / f"{DATE}_samples_gqa.jsonl").write_text(json.dumps(pope_line(0, "yes")) + "\n")
    one_line_error(run("eval-compare", tmp_path / "x"), "2 sample logs")


def test_a_run_folder_of_several_tasks_is_compared_on_the_other_runs_task(tmp_path):
    both = lmms_run(tmp_path / "both", GOLD)
    model = next(both.iterdir())
    (model / f"{DATE}_samples_gqa.jsonl").write_text(json.dumps({"doc_id": 0, "exact_match": 1.0}) + "\n")
    one = lmms_run(tmp_path / "one", ["yes"] * len(GOLD))
    out = compared(next(one.iterdir()) / f"{DATE}_samples_pope.jsonl", both)
    assert f"(n={len(GOLD)})" in out and "| both | pope |" in out
    one_line_error(run("eval-compare", both), "2 sample logs")


def test_a_results_file_alone_gives_the_scores_table(tmp_path):
    base = lmms_run(tmp_path / "base", GOLD, f1=0.9)
    only = lmms_run(tmp_path / "only", GOLD, f1=0.4)
    for log in only.glob("*/*_samples_*.jsonl"):
        log.unlink()
    out = compared(base, only)
    assert "| only | pope | 0.40 |" in out and "no per-question scores" in out


def test_an_mmmerge_folder_without_an_lmms_log_is_refused_beside_lmms_runs(model_dir, vqa, tmp_path):
    evaluate(model_dir, "vqav2", **vqa, out=tmp_path / "v", limit=2, max_new_tokens=2, progress=False)
    one_line_error(run("eval-compare", tmp_path / "v", lmms_run(tmp_path / "l", GOLD)),
                   "without an lmms-eval sample log")


def test_a_folder_of_neither_kind(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run("eval-compare", tmp_path / "empty"), "lmms-eval run")
