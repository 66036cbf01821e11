"""`mmmerge eval` on lmms-eval's benchmarks from lmms-lab's parquet folders: every task end to end on a tiny LLaVA,
prompts equal to the ones lmms-eval's task code builds, scores equal to `mmmerge score` on the same answers."""

import json
import os

import pytest

import lmms_parquet
from cli_run import one_line_error, run
from mmmerge import evaluate
from mmmerge.eval.lmms import score
from mmmerge.eval.lmms.table import LMMS_TASKS

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."

# (document, the prompt lmms-eval builds for it), written from lmms-eval 75571cf's task files named beside each
EXPECTED_PROMPTS = {
    # mme/mme.yaml post_prompt; mme/utils.py mme_doc_to_text drops " Please answer yes or no."
    "mme": (0, "Is there a dog in this image?" + SHORT),
    # pope/pope.yaml, pope/utils.py pope_doc_to_text
    "pope": (0, "Is there a dog in the image?" + SHORT),
    # mmbench/en_utils.py mmbench_doc_to_text: "{hint} {question} {options}\n{post_prompt}"; the post_prompt of
    # _default_template_mmbench_en_yaml starts with its own newline; options from mmbench_evals.py
    "mmbench_en_dev_static": (0, "A diagram What is shown? There are several options:\nA. cat\nB. dog\nC. bird\n"
                                 "D. fish\n" + LETTER),
    # mmmu/utils.py construct_prompt, mmmu_val.yaml multiple_choice_prompt
    "mmmu_val": (0, "Which style is shown in <image 1>?\nA. Baroque\nB. Gothic\nC. Cubism\n\n"
                    "Answer with the option's letter from the given choices directly."),
    # seedbench/utils.py seed_doc_to_text
    "seedbench": (0, "How many apples?\nA. one\nB. two\nC. three\nD. four" + LETTER),
    # chartqa/chartqa.yaml post_prompt
    "chartqa": (0, "What is the peak value?\nAnswer the question with a single word."),
    # ocrbench/utils.py: the question stripped, ocrbench.yaml: no post_prompt
    "ocrbench": (0, "what is written in the image?"),
    # vizwiz_vqa/utils.py: question.capitalize(); _default_template_vqa_yaml post_prompt
    "vizwiz_vqa_val": (1, "Is this a dog?" + UNANSWERABLE + SHORT),
    # ok_vqa/utils.py: the question as it is; _default_template_vqa_yaml post_prompt
    "ok_vqa_val2014": (1, "IS THIS A DOG?" + UNANSWERABLE + SHORT),
    # textvqa/utils.py: question.capitalize(), no OCR tokens (ocr: false)
    "textvqa_val": (1, "Is this a dog?" + SHORT),
    # docvqa/_default_template_docvqa_yaml
    "docvqa_val": (0, "What is the total?" + SHORT),
    # ai2d/utils.py ai2d_doc_to_text, prompt_format mcq
    "ai2d": (0, "Which stage comes first?\nA. egg\nB. larva\nC. adult" + LETTER),
    # scienceqa/utils.py sqa_doc_to_text, format default
    "scienceqa_img": (0, "Context: Look at the animals.\nWhich is a mammal?\nA. shark\nB. whale" + LETTER),
    # gqa/gqa.yaml post_prompt
    "gqa": (0, "Is the sky blue?" + SHORT),
    # mmstar/_default_template_yaml post_prompt (no final period)
    "mmstar": (0, "Which option describes the image?\nOptions: A: a cat, B: a dog, C: a car, D: a tree"
                  "\nAnswer with the option's letter from the given choices directly"),
    # realworldqa/utils.py: stripped, no post_prompt, so the question's own instruction stays
    "realworldqa": (0, "Which way is the road turning?\nA. Left\nB. Right\nC. Straight\nPlease answer directly with "
                       "only the letter of the correct option and nothing else."),
}
MORE_PROMPTS = {
    # a "nan" hint and an option left empty are left out (mmbench/en_utils.py, mmbench_evals.py)
    ("mmbench_en_dev_static", 2): "Which colour dominates? There are several options:\nA. red\nB. green\nC. blue\n"
                                  + LETTER,
    # an empty hint adds no context line (scienceqa/utils.py)
    ("scienceqa_img", 1): "Which is hotter?\nA. ice\nB. lava\nC. snow" + LETTER,
    # an open question (mmmu/utils.py construct_prompt, open_ended_prompt)
    ("mmmu_val", 1): "What year? <image 1>\n\nAnswer the question using a single word or phrase.",
}


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    """Every task evaluated once from its tiny parquet folder: task -> (folder, output folder, metrics)."""
    root = tmp_path_factory.mktemp("lmms")
    out = {}
    for task, build in lmms_parquet.BUILDERS.items():
        data = build(root / "data" / task)
        metrics = evaluate(model_dir, task, data=data, out=root / "out" / task, batch_size=2, max_new_tokens=3,
                           progress=False)
        out[task] = (data, root / "out" / task, metrics)
    return out


def samples(folder):
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_table_covers_every_scored_task():
    assert set(lmms_parquet.BUILDERS) == set(LMMS_TASKS)


@pytest.mark.parametrize("task", sorted(LMMS_TASKS))
def test_each_task_end_to_end_scores_as_score_does(runs, task):
    data, out, metrics = runs[task]
    rows = samples(out)
    assert [r["question_id"] for r in rows] == list(range(len(rows))) and len(rows) >= 2
    # the same answers as an lmms-eval 0.3 sample log, rescored by `mmmerge score`
    log = [{"doc_id": r["question_id"], "doc": r["doc"], "target": r["target"], "resps": [[r["raw"]]],
            "filtered_resps": [r["raw"]]} for r in rows]
    rescored = score(task, log)
    assert {k: v for k, v in metrics.items() if k in rescored.metrics} == rescored.metrics
    assert metrics[LMMS_TASKS[task].headline] == rescored.headline
    assert all(0 <= r["score"] <= 1 for r in rows)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["task"] == task and run_json["headline"] == LMMS_TASKS[task].headline


@pytest.mark.parametrize("task", sorted(EXPECTED_PROMPTS))
def test_prompts_are_lmms_evals(runs, task):
    rows = samples(runs[task][1])
    doc, expected = EXPECTED_PROMPTS[task]
    assert rows[doc]["question"] == expected
    for (t, d), text in MORE_PROMPTS.items():
        if t == task:
            assert rows[d]["question"] == text


def test_breakdown_per_category(runs):
    _, out, metrics = runs["mme"]
    # MME's subtask scores are acc + acc+ (0-200), and the perception headline is their sum
    assert set(metrics["per_category"]) == {"existence", "OCR", "code_reasoning"}
    assert metrics["per_category"]["existence"] + metrics["per_category"]["OCR"] == \
        pytest.approx(metrics["mme_perception_score"])
    assert {r["subject"] for r in samples(runs["mmmu_val"][1])} == {"Art_Theory", "Physics"}
    mmstar = runs["mmstar"][2]
    assert all(mmstar["per_category"][c] == mmstar[c] for c in mmstar["per_category"])
    assert set(runs["seedbench"][2]["per_question_type_id"]) == {"4", "5"}


def test_eval_compare_shows_the_breakdown(runs, model_dir, tmp_path):
    data, out, _ = runs["mme"]
    evaluate(model_dir, "mme", data=data, out=tmp_path / "again", max_new_tokens=2, progress=False)
    r = run("eval-compare", out, tmp_path / "again", "--resamples", 200)
    assert r.returncode == 0, r.stderr
    assert "by category" in r.stdout and "| code_reasoning |" in r.stdout


def test_cli_limit_and_pairs(model_dir, tmp_path):
    data = lmms_parquet.mme(tmp_path / "mme")
    r = run("eval", model_dir, "--task", "mme", "--data", data, "--out", tmp_path / "o", "--limit", 4,
            "--max-new-tokens", 2, "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(samples(tmp_path / "o")) == 4
    # three documents cut an MME pair: refused before the model loads, nothing written
    one_line_error(run("eval", model_dir, "--task", "mme", "--data", data, "--out", tmp_path / "p", "--limit", 3),
                   "MME scores questions in pairs")
    assert not (tmp_path / "p").exists()


def test_several_images(model_dir, tmp_path):
    """Every image lmms-eval's doc_to_visual gives goes to the model, one placeholder each before the text: the
    images MMMU's "<image N>" placeholders name (sorted), SEED-Bench's video frames."""
    data = lmms_parquet.mmmu(tmp_path / "mmmu", several_images=True)
    evaluate(model_dir, "mmmu_val", data=data, out=tmp_path / "o", max_new_tokens=2, progress=False)
    rows = samples(tmp_path / "o")
    assert rows[1]["question"].startswith("Compare <image 1> and <image 2>.")
    assert rows[1]["prompt"].count("<image>") == 2 and rows[0]["prompt"].count("<image>") == 1
    assert rows[1]["image"].endswith("row 1 image_1; " + rows[1]["image"].split("; ")[1])
    assert rows[1]["image"].split("; ")[1].endswith("row 1 image_2") and "image_2" not in rows[1]["doc"]
    data = lmms_parquet.seedbench(tmp_path / "seed", video=True)
    metrics = evaluate(model_dir, "seedbench", data=data, out=tmp_path / "s", max_new_tokens=2, progress=False)
    assert metrics["questions"] == 4 and {"seed_image", "seed_video", "seed_all"} <= set(metrics)
    video = samples(tmp_path / "s")[3]
    assert video["prompt"].count("<image>") == 3 and video["image"].endswith("row 3 image[2]")


def test_pope_and_gqa_files_stay_mmmerges_own_tasks(tmp_path):
    from mmmerge.eval.tasks import POPE, get_task

    assert isinstance(get_task("pope", tmp_path / "coco_pope_random.jsonl"), POPE)
    assert get_task("pope", lmms_parquet.pope(tmp_path / "pope")).name == "pope"
    assert type(get_task("pope", tmp_path / "pope")).__name__ == "LmmsEvalTask"


def test_wrong_folder_is_one_line(model_dir, tmp_path):
    data = lmms_parquet.chartqa(tmp_path / "chartqa")
    one_line_error(run("eval", model_dir, "--task", "mme", "--data", data, "--out", tmp_path / "o"),
                   "no column 'category'")
    one_line_error(run("eval", model_dir, "--task", "docvqa_val", "--data", data, "--out", tmp_path / "o"),
                   "no parquet shards of split 'validation' of config 'DocVQA'")
    assert not (tmp_path / "o").exists()


def put_dataset_in_cache(hub_cache, repo, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """`folder` as huggingface_hub stores a downloaded dataset snapshot (refs/main and the snapshot's files)."""
    import shutil

    root = hub_cache / f"datasets--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)


def test_dataset_id_from_the_cache(model_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    home = tmp_path / "home"
    put_dataset_in_cache(home / "hub", "tiny-org/POPE", lmms_parquet.pope(tmp_path / "pope"))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    by_id = evaluate(model_dir, "pope", data="tiny-org/POPE", out=tmp_path / "id", max_new_tokens=2, progress=False)
    by_folder = evaluate(model_dir, "pope", data=tmp_path / "pope", out=tmp_path / "dir", max_new_tokens=2,
                         progress=False)
    assert by_id == by_folder
    # without --data, the dataset lmms-eval's task reads (its `dataset_path`), from the cache
    put_dataset_in_cache(home / "hub", "lmms-lab-encoder/MME", lmms_parquet.mme(tmp_path / "mme"))
    evaluate(model_dir, "mme", out=tmp_path / "default", max_new_tokens=2, progress=False)
    assert json.loads((tmp_path / "default" / "run.json").read_text())["questions_file"] == "lmms-lab-encoder/MME"
    assert len(samples(tmp_path / "default")) == 6
    monkeypatch.chdir(tmp_path)
    one_line_error(run("eval", model_dir, "--task", "pope", "--data", "tiny-org/absent", "--out", tmp_path / "o"),
                   "tiny-org/absent", "not in the Hugging Face cache", "hf download --repo-type dataset")
    assert not (tmp_path / "o").exists() and os.environ["HF_HUB_OFFLINE"] == "1"


def test_broken_images_are_one_line(model_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = lmms_parquet.chartqa(tmp_path / "chartqa")
    shard = next((data / "data").glob("*.parquet"))
    rows = pq.read_table(shard).to_pylist()
    rows[1]["image"] = {"bytes": b"not a png", "path": "x.png"}
    pq.write_table(pa.Table.from_pylist(rows), shard)
    one_line_error(run("eval", model_dir, "--task", "chartqa", "--data", data, "--out", tmp_path / "o"),
                   f"{shard}: row 1", "not a readable image")
    rows[1]["image"] = {"bytes": None, "path": "images/x.png"}
    pq.write_table(pa.Table.from_pylist(rows), shard)
    one_line_error(run("eval", model_dir, "--task", "chartqa", "--data", data, "--out", tmp_path / "o"),
                   f"{shard}: row 1", "no image bytes (only a path, 'images/x.png')")
    shard.write_bytes(b"PAR1 truncated")
    one_line_error(run("eval", model_dir, "--task", "chartqa", "--data", data, "--out", tmp_path / "o"),
                   f"{shard}", "not a readable parquet file")
    assert not (tmp_path / "o").exists()


def as_documents(data, folder):
    """The parquet folder's rows as a JSONL of documents: each embedded image saved as a file, `image` its path."""
    import pyarrow.parquet as pq

    folder.mkdir()
    lines = []
    for shard in sorted(data.rglob("*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            cells = [k for k, v in row.items() if isinstance(v, dict) and "bytes" in v]
            for k in cells:
                (folder / f"{len(lines)}-{k}.png").write_bytes(row.pop(k)["bytes"])
            lines.append(json.dumps({**row, "image": [f"{len(lines)}-{k}.png" for k in cells]}) + "\n")
    (folder / "docs.jsonl").write_text("".join(lines))
    return folder / "docs.jsonl"


@pytest.mark.parametrize("task", ["mme", "mmbench_en_dev_static", "scienceqa_img", "chartqa"])
def test_jsonl_documents_are_the_same_task(runs, model_dir, task, tmp_path):
    """One task, two readers: the parquet rows as JSONL documents give the same prompts, answers, scores, metrics."""
    data, out, metrics = runs[task]
    docs = as_documents(data, tmp_path / "docs")
    again = evaluate(model_dir, task, data=docs, out=tmp_path / "o", batch_size=2, max_new_tokens=3, progress=False)
    assert again == metrics
    keys = ("question_id", "question", "prompt", "raw", "answer", "score", "target", "doc")
    assert [{k: r[k] for k in keys} for r in samples(tmp_path / "o")] == [{k: r[k] for k in keys} for r in samples(out)]


@pytest.mark.parametrize("task", ["mme", "mmmu_val", "mmbench_en_dev_static", "pope", "chartqa"])
def test_eval_writes_the_lmms_eval_log(runs, task):
    """`mmmerge score` of the sample log eval wrote gives the eval's metrics; the results JSON holds them too."""
    _, out, metrics = runs[task]
    log = out / f"lmms_samples_{task}.jsonl"
    r = run("score", "--task", task, log, "--json")
    assert r.returncode == 0, r.stderr
    scored = json.loads(r.stdout)
    assert scored["metrics"] == {k: metrics[k] for k in scored["metrics"]}
    assert scored["headline"] == metrics[LMMS_TASKS[task].headline]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["doc_id"], x["resps"][0][0], x["doc"]) for x in lines] == \
        [(s["question_id"], s["raw"], s["doc"]) for s in samples(out)]
    results = json.loads((out / "lmms_results.json").read_text())["results"][task]
    assert {k: results[f"{k},none"] for k in scored["metrics"]} == scored["metrics"]
