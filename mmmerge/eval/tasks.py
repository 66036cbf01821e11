"""VQA tasks read from their files as published: samples, LLaVA-1.5 prompts, answer rules and scores.

Every reader checks its whole input before anything runs (a missing image, a question without an annotation, a
malformed file) and raises `EvalDataError` naming the file and the question id, so a bad run stops before the
model loads and writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MMMergeError
from ..io import read_json, read_jsonl
from . import metrics as M

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


class EvalDataError(MMMergeError):
    """An evaluation file or item cannot be used as given."""


@dataclass
class Sample:
    """One question: what the model sees, and what its answer is scored against (`target` is None without
    ground truth, e.g. VQAv2 test-dev, whose predictions go to the evaluation server)."""
    question_id: Any
    image: Path
    question: str
    target: Any = None
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ file reading
def _path(p, what: str, task: str) -> Path:
    if p is None:
        raise EvalDataError(f"task {task} needs {what}")
    p = Path(p)
    if not p.exists():
        raise EvalDataError(f"{p}: no such file or folder ({what})")
    return p


def _jsonl(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path, EvalDataError)]


def _get(item: dict, key: str, path: Path, qid) -> Any:
    if key not in item:
        raise EvalDataError(f"{path}: question {qid}: missing field {key!r}")
    return item[key]


def _check_images(samples: list[Sample], source: Path) -> None:
    for s in samples:
        if isinstance(s.image, Path) and not s.image.is_file():
            raise EvalDataError(f"{source}: question {s.question_id}: image not found: {s.image}")


# ------------------------------------------------------------------------------------------------ tasks
class EvalTask:
    """A task family: `read` its files into samples; `answer` turns generated text into the answer written to
    predictions.json; `score` is the per-question score in [0, 1]; `metrics` the report of the official script."""
    name = ""
    instruction = SHORT  # LLaVA-1.5's short-answer instruction, on the line after the question
    headline = "overall"  # the metrics.json key eval-compare reports
    one_line = True  # answers are one line: generation stops at the line end (short answers, letters, yes/no)
    max_new_tokens = 16  # generation's limit unless the caller gives one
    breakdown = None  # the samples.jsonl field eval-compare breaks scores down by unless told another
    default_data = None  # what the task reads when no file is given (a dataset ID), if anything

    @property
    def prompt(self) -> str:
        """The prompt template: the question, then the instruction on its own line."""
        return "{question}\n" + self.instruction

    @property
    def stop_strings(self) -> tuple:
        """Where generation stops besides the end of sequence."""
        return ("\n",) if self.one_line else ()

    def read(self, questions=None, annotations=None, images=None) -> list[Sample]:
        raise NotImplementedError

    def read_limited(self, questions, annotations, images, limit: int | None) -> list[Sample]:
        """The first `limit` samples (all when None); a task reading a large source stops early."""
        samples = self.read(questions, annotations, images)
        return samples if limit is None else samples[:limit]

    def answer(self, raw: str) -> str:
        return raw.strip()

    def split_key(self, sample: Sample):
        """What a dev/test split keeps on one side: samples sharing it are scored together."""
        return sample.question_id

    def score(self, answer: str, sample: Sample) -> float | None:
        raise NotImplementedError

    def score_all(self, samples: list[Sample], answers: list[str]) -> list[float | None]:
        """Every sample's score; a task whose scores depend on the order of the documents overrides it."""
        return [self.score(a, s) for a, s in zip(answers, samples)]

    def metrics(self, samples: list[Sample], answers: list[str], scores: list[float]) -> dict:
        raise NotImplementedError


class VQAv2(EvalTask):
    """VQAv2 (and VQA v1 / VizWiz-style files in the same layout): questions JSON {"questions": [...]},
    annotations JSON {"annotations": [...]}, images named COCO_<data_subtype>_<image_id:012d>.jpg.

    The answer written is the generated text after EvalAI's answer processor, as LLaVA writes its VQAv2
    submissions; it is scored by the official vqaEval.py logic. Without annotations (test-dev) only
    predictions.json is meaningful."""
    name = "vqav2"

    def read(self, questions=None, annotations=None, images=None):
        qpath = _path(questions, "--questions (the questions JSON)", self.name)
        folder = _path(images, "--images (the COCO image folder)", self.name)
        qdata = read_json(qpath)
        subtype = qdata.get("data_subtype", "val2014")
        qs = _get(qdata, "questions", qpath, "-")
        anns = {}
        if annotations is not None:
            apath = _path(annotations, "--annotations", self.name)
            for i, a in enumerate(_get(read_json(apath), "annotations", apath, "-")):
                anns[_get(a, "question_id", apath, f"#{i}")] = (i, a)
        samples = []
        for q in qs:
            qid = _get(q, "question_id", qpath, "?")
            image = folder / f"COCO_{subtype}_{int(_get(q, 'image_id', qpath, qid)):012d}.jpg"
            s = Sample(qid, image, _get(q, "question", qpath, qid))
            if annotations is not None:
                if qid not in anns:
                    raise EvalDataError(f"{annotations}: question {qid} has no annotation")
                order, a = anns[qid]
                answers = [_get(x, "answer", apath, qid) for x in _get(a, "answers", apath, qid)]
                if not answers:
                    raise EvalDataError(f"{annotations}: question {qid} has no answers")
                s.target = answers
                s.info = {"answer_type": a.get("answer_type", "other"), "question_type": a.get("question_type", "none"),
                          "order": order}
            samples.append(s)
        return samples

    def answer(self, raw):
        return M.vqa_answer_processor(raw)

    def score(self, answer, sample):
        return None if sample.target is None else M.vqa_accuracy(answer, sample.target)

    def metrics(self, samples, answers, scores):
        if any(s is None for s in scores):
            return {"questions": len(samples), "note": "no annotations: submit predictions.json to the evaluation server"}
        # The official script walks the annotation file's order; the float sums follow it.
        rows = sorted(zip(samples, scores), key=lambda r: r[0].info["order"])
        return M.vqa_aggregate([sc for _, sc in rows], [s.info["answer_type"] for s, _ in rows],
                               [s.info["question_type"] for s, _ in rows])


class TextVQA(EvalTask):
    """TextVQA_0.5.1_*.json ({"data": [...]}, ten answers per question), images <image_id>.jpg in --images.
    Scored as LLaVA and MMF score it (m4c_evaluator's TextVQAAccuracyEvaluator). The default prompt has no
    OCR tokens (LLaVA's 58.2 used Rosetta OCR tokens in the prompt)."""
    name = "textvqa"
    headline = "accuracy"

    def read(self, questions=None, annotations=None, images=None):
        qpath = _path(questions, "--questions (TextVQA_0.5.1_val.json)", self.name)
        folder = _path(images, "--images (the TextVQA image folder)", self.name)
        samples = []
        for i, q in enumerate(_get(read_json(qpath), "data", qpath, "-")):
            qid = q.get("question_id", i)
            image = folder / f"{_get(q, 'image_id', qpath, qid)}.jpg"
            samples.append(Sample(qid, image, _get(q, "question", qpath, qid), q.get("answers")))
        return samples

    def score(self, answer, sample):
        return None if not sample.target else M.textvqa_accuracy(answer, sample.target)

    def metrics(self, samples, answers, scores):
        if any(s is None for s in scores):
            return {"questions": len(samples), "note": "no answers in the file"}
        return {"accuracy": M.mean_percent(scores), "questions": len(scores)}


class GQA(EvalTask):
    """GQA balanced questions JSON ({question id: {...}}), images <imageId>.jpg. Answers converted as LLaVA's
    convert_gqa_for_eval.py does; accuracy, binary/open and per-type accuracy as the official eval.py computes
    them over the balanced questions (questions with isBalanced false are not read)."""
    name = "gqa"
    headline = "accuracy"

    def read(self, questions=None, annotations=None, images=None):
        qpath = _path(questions, "--questions (e.g. testdev_balanced_questions.json)", self.name)
        folder = _path(images, "--images (the GQA image folder)", self.name)
        samples = []
        for qid, q in read_json(qpath).items():
            if not isinstance(q, dict):
                raise EvalDataError(f"{qpath}: question {qid}: expected a JSON object")
            if not q.get("isBalanced", True):
                continue
            types = q.get("types", {})
            samples.append(Sample(qid, folder / f"{_get(q, 'imageId', qpath, qid)}.jpg", _get(q, "question", qpath, qid),
                                  q.get("answer"), {"structural": types.get("structural", ""),
                                                    "semantic": types.get("semantic", "")}))
        return samples

    def answer(self, raw):
        return M.gqa_answer(raw)

    def score(self, answer, sample):
        return None if sample.target is None else float(answer == sample.target)

    def metrics(self, samples, answers, scores):
        if any(s is None for s in scores):
            return {"questions": len(samples), "note": "no answers in the file"}
        return M.gqa_metrics(answers, [s.target for s in samples], [s.info["structural"] for s in samples],
                             [s.info["semantic"] for s in samples])


class POPE(EvalTask):
    """POPE JSONL ({"question_id", "image", "text", "label"}, one file per split or LLaVA's merged file with
    "category"); a file named like coco_pope_<category>.json gives its category. Scored by POPE's rule."""
    name = "pope"
    headline = "f1"

    def read(self, questions=None, annotations=None, images=None):
        qpath = _path(questions, "--questions (a POPE JSONL file)", self.name)
        folder = _path(images, "--images (the COCO val2014 image folder)", self.name)
        m = re.search(r"pope_(\w+?)\.jsonl?$", qpath.name)
        samples = []
        for i, q in enumerate(_jsonl(qpath)):
            qid = q.get("question_id", i)
            label = q.get("label")
            if label is not None and label not in ("yes", "no"):
                raise EvalDataError(f"{qpath}: question {qid}: label must be yes or no, not {label!r}")
            text = q.get("text", q.get("question"))
            if text is None:
                raise EvalDataError(f"{qpath}: question {qid}: missing field 'text'")
            samples.append(Sample(qid, folder / _get(q, "image", qpath, qid), text, label,
                                  {"category": q.get("category", m.group(1) if m else "all")}))
        return samples

    def answer(self, raw):
        return M.pope_answer(raw.strip())

    def score(self, answer, sample):
        return None if sample.target is None else float(answer == sample.target)

    def metrics(self, samples, answers, scores):
        if any(s is None for s in scores):
            return {"questions": len(samples), "note": "no labels in the file"}
        out = M.pope_metrics(answers, [s.target for s in samples])
        cats = sorted({s.info["category"] for s in samples})
        if len(cats) > 1:
            out["perCategory"] = {c: M.pope_metrics([a for a, s in zip(answers, samples) if s.info["category"] == c],
                                                    [s.target for s in samples if s.info["category"] == c])
                                  for c in cats}
        return out


class ScienceQA(EvalTask):
    """ScienceQA problems.json, the IMG subset of the test split (split "test" and an image); images at
    --images/<pid>/<image> or --images/test/<pid>/<image>. The question shows "Context: <hint>", the question
    and lettered choices, as LLaVA-1.5's CQM-A file; parsed and scored as eval_science_qa.py does."""
    name = "scienceqa"
    instruction = LETTER
    headline = "accuracy"
    split = "test"

    def read(self, questions=None, annotations=None, images=None):
        qpath = _path(questions, "--questions (problems.json)", self.name)
        folder = _path(images, "--images (the ScienceQA image folder)", self.name)
        samples = []
        for pid, p in read_json(qpath).items():
            if not isinstance(p, dict):
                raise EvalDataError(f"{qpath}: question {pid}: expected a JSON object")
            if p.get("split", self.split) != self.split or not p.get("image"):
                continue
            choices = _get(p, "choices", qpath, pid)
            if not 2 <= len(choices) <= len(M.OPTIONS):
                raise EvalDataError(f"{qpath}: question {pid}: {len(choices)} choices (2 to 5 expected)")
            image = folder / pid / p["image"]
            if not image.exists() and (folder / self.split / pid / p["image"]).exists():
                image = folder / self.split / pid / p["image"]
            hint = (p.get("hint") or "").strip()
            text = (f"Context: {hint}\n" if hint else "") + _get(p, "question", qpath, pid) + "\n" + "\n".join(
                f"{M.OPTIONS[i]}. {c}" for i, c in enumerate(choices))
            samples.append(Sample(pid, image, text, p.get("answer"),
                                  {"num_choices": len(choices), "subject": p.get("subject", ""),
                                   "choices": choices}))
        return samples

    def score(self, answer, sample):
        if sample.target is None:
            return None
        return float(M.scienceqa_choice(answer, sample.info["num_choices"]) == sample.target)

    def metrics(self, samples, answers, scores):
        if any(s is None for s in scores):
            return {"questions": len(samples), "note": "no answers in the file"}
        return M.scienceqa_metrics([s == 1.0 for s in scores], [s.info["subject"] for s in samples])


class JSONL(EvalTask):
    """Plain JSONL: {"image", "question", "answers"} (+ optional "question_id", "answer_type", "question_type");
    images relative to --images, else to the JSONL's folder. Ten answers are scored with the VQA accuracy;
    fewer (a list or one string) by exact match after the VQA normalisation against any of them."""
    name = "jsonl"

    def read(self, questions=None, annotations=None, images=None):
        qpath = _path(questions, "--questions (the JSONL file)", self.name)
        folder = Path(images) if images is not None else qpath.parent
        samples = []
        for i, q in enumerate(_jsonl(qpath)):
            qid = q.get("question_id", q.get("id", i))
            answers = q.get("answers", q.get("answer"))
            if isinstance(answers, str):
                answers = [answers]
            if answers is not None and (not isinstance(answers, list) or not answers):
                raise EvalDataError(f"{qpath}: question {qid}: 'answers' must be a non-empty list or a string")
            samples.append(Sample(qid, folder / _get(q, "image", qpath, qid), _get(q, "question", qpath, qid),
                                  answers, {"answer_type": q.get("answer_type", "all"),
                                            "question_type": q.get("question_type", "all")}))
        return samples

    def score(self, answer, sample):
        if sample.target is None:
            return None
        if len(sample.target) == 10:
            return M.vqa_accuracy(answer, sample.target)
        return float(M.vqa_normalize(answer.strip()) in {M.vqa_normalize(a.strip()) for a in sample.target})

    def metrics(self, samples, answers, scores):
        if any(s is None for s in scores):
            return {"questions": len(samples), "note": "no answers in the file"}
        return M.vqa_aggregate(scores, [s.info["answer_type"] for s in samples],
                               [s.info["question_type"] for s in samples])


TASKS = {t.name: t for t in (VQAv2, TextVQA, GQA, POPE, ScienceQA, JSONL)}


def get_task(name: str, data=None) -> EvalTask:
    """The task `name`. pope and gqa are both mmmerge's own tasks (read from the official files) and lmms-eval
    tasks (read from lmms-lab's parquet datasets): a folder or a dataset ID as `data` picks the latter."""
    from .lmms.sources import LMMS_SOURCES

    if name in LMMS_SOURCES and (name not in TASKS or _dataset_given(data)):
        from .lmms.task import LmmsEvalTask

        return LmmsEvalTask(name)
    if name not in TASKS:
        raise EvalDataError(f"unknown task {name!r}; choose one of {', '.join(dict.fromkeys([*TASKS, *LMMS_SOURCES]))}")
    return TASKS[name]()


def _dataset_given(data) -> bool:
    """A folder (lmms-lab's parquet layout), or no such path but an `org/name` dataset ID."""
    from ..hub import is_hub_id

    return data is not None and (Path(data).is_dir() or (not Path(data).exists() and is_hub_id(str(data))))


def read_task(task: EvalTask, questions=None, annotations=None, images=None, limit: int | None = None) -> list[Sample]:
    """Read, cut to the first `limit` questions, check every image exists, and refuse duplicate ids. A file of
    the right kind but the wrong shape (a number where a list belongs, an unhashable id, a non-numeric image id)
    is one EvalDataError naming the file, not a traceback from deep inside the reader."""
    try:
        samples = task.read_limited(questions, annotations, images, limit)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        files = " / ".join(str(f) for f in (questions, annotations) if f is not None)
        raise EvalDataError(f"{files}: not laid out as {task.name} files are ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'malformed'})") from e
    if not samples:
        raise EvalDataError(f"{questions}: no questions to evaluate")
    seen = set()
    for s in samples:
        if not isinstance(s.question, str) or isinstance(s.question_id, (list, dict)):
            raise EvalDataError(f"{questions}: question {s.question_id!r}: the question must be text and its id a "
                                "number or a string")
        if s.question_id in seen:
            raise EvalDataError(f"{questions}: question {s.question_id} appears twice")
        seen.add(s.question_id)
    _check_images(samples, Path(str(questions)))
    return samples
