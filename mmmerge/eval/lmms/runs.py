"""lmms-eval runs as `eval-compare` reads them: a results JSON and a `--log_samples` JSONL per task.

lmms-eval (0.3 and later; lmms_eval/loggers/evaluation_tracker.py) writes `<date>_results.json` and
`<date>_samples_<task>.jsonl` into `<output_path>/<model>/`; `mmmerge eval` writes the same files as
`lmms_results.json` and `lmms_samples_<task>.jsonl`. A run is one such folder (or its parent holding one model
folder), or one samples file. Scores come from the results JSON ("metric,none"); without one, a sample log that
holds its documents is scored as `mmmerge score` scores it. Per-document scores, paired by `doc_id`, are the
metric fields lmms-eval's `process_results` put on each line (a number, or an object with a numeric `score`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ...io import read_json, read_jsonl
from ..tasks import EvalDataError
from .log import entries_from_rows
from .table import LMMS_TASKS

SAMPLES_GLOB, RESULTS_GLOB = "*_samples_*.jsonl", "*_results.json"
# the fields of a sample line that are not metrics (lmms-eval 0.3 and later)
LINE_FIELDS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "doc_hash", "prompt_hash",
               "target_hash", "input", "token_counts", "input_media"}


def is_lmms_run(path) -> bool:
    """A samples file, or a folder (or its model subfolder) holding lmms-eval's files."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".jsonl"
    return path.is_dir() and bool(_files(path, SAMPLES_GLOB) or _files(path, RESULTS_GLOB))


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern)) or sorted(folder.glob(f"*/{pattern}"))


def task_of(samples: Path) -> str:
    """The task a samples file is of, from lmms-eval's name `<date>_samples_<task>.jsonl`."""
    head, sep, task = samples.stem.partition("_samples_")
    if not sep or not task:
        raise EvalDataError(f"{samples}: not named as lmms-eval names sample logs (<date>_samples_<task>.jsonl), so "
                            f"its task is unknown")
    return task


def _one(found: list[Path], folder: Path, what: str) -> Path | None:
    if len(found) > 1:
        raise EvalDataError(f"{folder}: {len(found)} {what} ({', '.join(p.name for p in found[:4])}); give the "
                            f"samples file of the run to compare")
    return found[0] if found else None


def per_document(value):
    """A line's metric field as a per-document score: a number, or an object's numeric `score`; else None."""
    if isinstance(value, dict):
        value = value.get("score")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _scores_from_results(path: Path, task: str) -> dict:
    data = read_json(path)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not isinstance(results.get(task), dict):
        raise EvalDataError(f"{path}: no `results.{task}` (an lmms-eval results file of this task?)")
    # "metric,filter": the metric's name alone under lmms-eval's default filter "none"
    return {(k[:-len(",none")] if k.endswith(",none") else k): v for k, v in results[task].items()
            if "," in k and "_stderr," not in k and per_document(v) is not None}


def _read_lines(path: Path) -> list[tuple[int, dict]]:
    rows = read_jsonl(path, error=EvalDataError)
    seen = {}
    for n, row in rows:
        doc_id = row.get("doc_id") if isinstance(row, dict) else None
        if not isinstance(doc_id, int) or isinstance(doc_id, bool):
            raise EvalDataError(f"{path}: line {n}: no integer `doc_id`: not an lmms-eval sample log line")
        if doc_id in seen:
            raise EvalDataError(f"{path}: line {n}: doc_id {doc_id} again (first at line {seen[doc_id]})")
        seen[doc_id] = n
    if not rows:
        raise EvalDataError(f"{path}: no documents")
    return rows


def _doc_rows(path: Path, lines, metric_order: list[str]) -> list[dict]:
    """eval-compare's rows: question_id = doc_id, the per-document score of the first metric field the line has
    (in `metric_order`, then the line's own order), and the document's plain fields for `--by`."""
    rows = []
    for n, line in lines:
        names = [m for m in metric_order if m in line] + [k for k in line if k not in LINE_FIELDS]
        score = next((per_document(line[m]) for m in names if per_document(line[m]) is not None), None)
        if score is not None and not math.isfinite(score):
            raise EvalDataError(f"{path}: line {n}: score {json.dumps(score)} is not a finite number")
        doc = line.get("doc") if isinstance(line.get("doc"), dict) else {}
        rows.append({**{k: v for k, v in doc.items() if isinstance(v, (str, int, float))},
                     "question_id": line["doc_id"], "score": score})
    return rows


def _results_beside(samples: Path) -> Path | None:
    """The results file of the same lmms-eval run: `<date>_results.json` beside `<date>_samples_<task>.jsonl`."""
    results = samples.with_name(f"{samples.name.partition('_samples_')[0]}_results.json")
    return results if results.is_file() else None


def _results_only(path: Path, task: str | None) -> dict:
    """A run folder with a results file and no sample log: its scores, no per-document ones."""
    results = _one(_files(path, RESULTS_GLOB), path, "results files")
    if results is None:
        raise EvalDataError(f"{path}: no lmms-eval sample log or results file")
    data = read_json(results)
    tasks = list(data.get("results", {})) if isinstance(data, dict) and isinstance(data.get("results"), dict) else []
    if task is None and len(tasks) != 1:
        raise EvalDataError(f"{results}: results of {len(tasks)} tasks ({', '.join(tasks[:4])}) and no sample log; "
                            f"give the sample log of one task")
    task = task or tasks[0]
    scores = _scores_from_results(results, task)
    known = LMMS_TASKS.get(task)
    headline = known.headline if known and known.headline in scores else next(iter(scores), None)
    if headline is None:
        raise EvalDataError(f"{results}: no score of {task}")
    return {"name": path.name, "path": path, "task": task, "model": "?", "headline": headline, "scores": scores,
            "samples": [], "files": [results]}


def load_lmms_run(path, task: str | None = None) -> dict:
    """An lmms-eval run (a folder or one samples file) as `eval-compare` holds a run."""
    path = Path(path)
    if path.is_file():
        samples = path
    else:
        found = _files(path, SAMPLES_GLOB)
        if task is not None:
            found = [p for p in found if task_of(p) == task]
        samples = _one(found, path, "sample logs")
        if samples is None:
            return _results_only(path, task)
    task, results = task_of(samples), _results_beside(samples)
    lines = _read_lines(samples)
    known = LMMS_TASKS.get(task)
    if results is not None:
        scores = _scores_from_results(results, task)
    elif known is not None and all("doc" in line for _, line in lines):
        scores = known.scorer(entries_from_rows([(f"{samples}: line {n}", line) for n, line in lines]), [])
    else:
        scores = {}
    order = [known.headline] if known else []
    rows = _doc_rows(samples, lines, order + list(scores))
    if not scores:
        scored = [r["score"] for r in rows if r["score"] is not None]
        if not scored:
            raise EvalDataError(f"{samples}: no scores: no results file beside it and no per-document metric fields")
        scores = {"mean per document": sum(scored) / len(scored)}
    headline = known.headline if known and known.headline in scores else next(iter(scores))
    return {"name": path.stem if path.is_file() else path.name, "path": path, "task": task, "model": "?",
            "headline": headline, "scores": scores, "samples": rows,
            "files": [samples] + ([results] if results else []), "samples_file": samples}


def shared_task(paths) -> str | None:
    """The one task of the runs that hold one sample log each: a folder with logs of several tasks (lmms-eval
    writes every task of a run there) is compared on that task."""
    tasks = set()
    for p in map(Path, paths):
        logs = [p] if p.is_file() else _files(p, SAMPLES_GLOB)
        if len(logs) == 1:
            tasks.add(task_of(logs[0]))
    return tasks.pop() if len(tasks) == 1 else None


def has_lmms_log(folder) -> bool:
    """An `mmmerge eval` folder that holds lmms-eval files."""
    return bool(sorted(Path(folder).glob(SAMPLES_GLOB)))
