"""`mmmerge eval`'s answers written as lmms-eval writes its own, so `mmmerge score`, `eval-compare` and lmms-eval's
users read them: a `--log_samples` JSONL per task and a results JSON.

The format follows lmms-eval 0.3.0 (github.com/EvolvingLMMs-Lab/lmms-eval, tag v0.3.0): each line is the
`example` of lmms_eval/evaluator.py `evaluate` (doc_id, doc without image fields, target, arguments, resps,
filtered_resps, doc/prompt/target hashes, then the task's `process_results` fields) as
lmms_eval/loggers/evaluation_tracker.py `save_results_samples` dumps it (`input` added, `target` as text); the
results JSON is `evaluate`'s `results_dict` (results as "metric,none" with "metric_stderr,none", configs,
versions, n-shot, higher_is_better, n-samples) with `simple_evaluate`'s `config`. lmms-eval names the files
`<date>_samples_<task>.jsonl` and `<date>_results.json`; here the date is "lmms" (and no `date` field), so a
run's files do not depend on the clock.

`filtered_resps` holds the answer as mmmerge's official rule reads it (lmms-eval's "filter" step): so lmms-eval's
scoring of the log equals the eval's metrics.json (fractions, not percent), with one exception: lmms-eval's `gqa`
ignores ASCII punctuation where the official eval.py does not. mmmerge's `vqav2` has no log: lmms-eval's
`vqav2_val` is none of the tasks `mmmerge score` scores; `jsonl` is mmmerge's own format. An lmms-eval task
(`LmmsEvalTask`, from parquet or JSONL documents) is logged with its rows as they are (images dropped) and the
answer unfiltered: its scorers are lmms-eval's own.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...io.atomic import atomic_write_text
from .. import metrics as M
from ..tasks import TASKS
from .log import Entry, entries_from_rows
from .per_document import PER_DOCUMENT
from .task import LmmsEvalTask
from .table import LMMS_TASKS

SAMPLES_FILE = "lmms_samples_{task}.jsonl"
RESULTS_FILE = "lmms_results.json"
_POPE_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")


def _stem(sample) -> str:
    return Path(sample.image).stem


def _scienceqa_letter(answer: str, sample) -> str:
    """LLaVA's eval_science_qa.py parse as the filter: the letter it reads, "" when none (always wrong)."""
    index = M.scienceqa_choice(answer, sample.info["num_choices"])
    return M.OPTIONS[index] if index >= 0 else ""


@dataclass(frozen=True)
class LogForm:
    """How one mmmerge task is logged as an lmms-eval task: the lmms-eval dataset row, the filtered answer, the
    target lmms-eval writes, and `process_results`'s fields from the one-document score `one`."""
    task: str
    doc: Callable  # Sample -> dict, the row in the lmms-lab dataset's field names (images left out)
    target: Callable  # Sample -> the gold as lmms-eval's doc_to_target gives it
    filtered: Callable = lambda answer, sample: answer
    fields: Callable = lambda doc, answer, one: {"exact_match": one["exact_match"]}
    scored_alone: bool = True  # the scorer can score one document alone (`one`); else `one` is {}


def _pope_fields(doc, answer, one):
    row = {"question_id": doc["question_id"], "score": one["pope_accuracy"], "prediction": answer.lower().strip(),
           "ground_truth": doc["answer"].lower().strip()}
    return {m: dict(row) for m in _POPE_METRICS}


LOG_FORMS = {
    "pope": LogForm("pope", lambda s: {"question_id": s.question_id, "question": s.question, "answer": s.target,
                                       "image_source": _stem(s), "category": s.info["category"]},
                    lambda s: s.target, fields=_pope_fields),
    "textvqa": LogForm("textvqa_val", lambda s: {"question_id": s.question_id, "question": s.question,
                                                 "image_id": _stem(s), "answers": s.target},
                       lambda s: s.target,
                       fields=lambda doc, answer, one: {"exact_match": one["exact_match"], "submission": {
                           "question_id": doc["question_id"], "answer": M.vqa_answer_processor(answer)}}),
    "gqa": LogForm("gqa", lambda s: {"id": s.question_id, "imageId": _stem(s), "question": s.question,
                                     "answer": s.target, "types": {"structural": s.info["structural"],
                                                                   "semantic": s.info["semantic"]}},
                   lambda s: s.target),
    "scienceqa": LogForm("scienceqa_img", lambda s: {"question": s.question, "choices": s.info["choices"],
                                                     "answer": s.target, "subject": s.info["subject"]},
                         lambda s: M.OPTIONS[s.target], filtered=_scienceqa_letter),
}


def lmms_form(task) -> LogForm:
    """An lmms-eval task (`LmmsEvalTask`): the row as it is, the answer unfiltered, and the headline's
    per-document score where a document alone has one."""
    alone = task.name in PER_DOCUMENT
    return LogForm(task.name, lambda s: s.info["doc"], lambda s: "" if s.target is None else s.target,
                   scored_alone=alone,
                   fields=lambda doc, answer, one: {task.headline: one[task.headline]} if alone else {})


def _hash(text: str) -> str:
    """lmms-eval's hash_string: sha256 hex of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_lines(form: LogForm, samples, prompts, raws, answers) -> list[dict]:
    """One `--log_samples` line per question, doc_id = its position in the task's file."""
    spec, lines = LMMS_TASKS[form.task], []
    for doc_id, (s, prompt, raw, answer) in enumerate(zip(samples, prompts, raws, answers, strict=True)):
        doc, filtered, target = form.doc(s), form.filtered(answer, s), str(form.target(s))
        one = spec.scorer([Entry(doc_id, doc, filtered.strip(), f"question {s.question_id}")], []) \
            if form.scored_alone else {}
        lines.append({"doc_id": doc_id, "doc": doc, "target": target, "arguments": {}, "resps": [[raw]],
                      "filtered_resps": [filtered],
                      "doc_hash": _hash(json.dumps(doc, indent=2, default=str, ensure_ascii=False)),
                      "prompt_hash": _hash(prompt), "target_hash": _hash(target),
                      **form.fields(doc, filtered, one), "input": prompt})
    return lines


def _stderr(values) -> float | str:
    """lmms-eval's `mean_stderr` (sample standard deviation / √n) for per-document numbers, "N/A" otherwise."""
    if len(values) < 2 or not all(isinstance(v, (int, float)) for v in values):
        return "N/A"
    return statistics.stdev(values) / math.sqrt(len(values))


def results_json(task: str, lines: list[dict], run: dict) -> dict:
    """lmms-eval's results file for one task scored from its own sample lines."""
    scores = LMMS_TASKS[task].scorer(entries_from_rows([(f"line {i + 1}", line) for i, line in enumerate(lines)]), [])
    result = {"alias": task}
    for metric, value in scores.items():
        result[f"{metric},none"] = value
        result[f"{metric}_stderr,none"] = _stderr([line.get(metric) for line in lines])
    metrics = list(scores)
    return {
        "results": {task: result}, "group_subtasks": {task: []},
        "configs": {task: {"task": task, "output_type": "generate_until", "metric_list": [
            {"metric": m, "higher_is_better": True} for m in metrics]}},
        "versions": {task: None}, "n-shot": {task: 0}, "higher_is_better": {task: {m: True for m in metrics}},
        "n-samples": {task: {"original": len(lines), "effective": len(lines)}},
        "config": {"model": "mmmerge", "model_args": f"pretrained={run['model']}", "batch_size": run["batch_size"],
                   "device": None, "limit": None, "gen_kwargs": {"max_new_tokens": run["max_new_tokens"],
                                                                 "do_sample": False}},
        "model_name": run["model"],
    }


def write_lmms_log(task, samples, prompts, raws, answers, scores, out: Path, run: dict) -> str | None:
    """Write OUT/lmms_samples_<lmms task>.jsonl and OUT/lmms_results.json for a task lmms-eval names, when every
    question has gold answers (a score); return the lmms-eval task name, or None when nothing is written."""
    if isinstance(task, LmmsEvalTask):  # its documents are lmms-eval's rows already
        form = lmms_form(task)
    elif type(task) is TASKS.get(task.name) and task.name in LOG_FORMS and not any(sc is None for sc in scores):
        form = LOG_FORMS[task.name]
    else:
        return None
    lines = sample_lines(form, samples, prompts, raws, answers)
    atomic_write_text(out / SAMPLES_FILE.format(task=form.task),
                      "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    atomic_write_text(out / RESULTS_FILE, json.dumps(results_json(form.task, lines, run), indent=2,
                                                     ensure_ascii=False))
    return form.task
