"""Open-answer benchmarks as lmms-eval scores them: ChartQA, OCRBench, TextVQA / VizWiz / OK-VQA, DocVQA, GQA
(each task's utils.py and YAML in lmms_eval/tasks/, and `anls` in lmms_eval/api/metrics.py)."""

from __future__ import annotations

import statistics

from ..metrics import vqa_answer_processor
from ..tasks import EvalDataError
from .choices import exact_match, mean


def _float(text: str):
    """ChartQA's `_to_float`: Python's float(), a trailing % dividing by 100; None when it is not a number."""
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str) -> bool:
    """Both numbers (and the target non-zero): within 5% of the target; otherwise equal ignoring case."""
    p, t = _float(prediction), _float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= 0.05
    return prediction.lower() == target.lower()


def chartqa(entries, notes) -> dict:
    """`relaxed_overall`, and the same over `type` "human_test" (`relaxed_human_split`) and the rest
    (`relaxed_augmented_split`)."""
    scores: dict = {"relaxed_overall": [], "relaxed_human_split": [], "relaxed_augmented_split": []}
    for e in entries:
        score = 1.0 if relaxed_correct(e.answer, str(e.field("answer"))) else 0.0
        scores["relaxed_overall"].append(score)
        split = "relaxed_human_split" if e.field("type") == "human_test" else "relaxed_augmented_split"
        scores[split].append(score)
    return {k: mean(v) for k, v in scores.items() if v}


OCRBENCH_TYPES = ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                  "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
                  "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction",
                  "Handwritten Mathematical Expression Recognition")


def _fold_fullwidth(text: str) -> str:
    """Fullwidth ASCII (U+FF01-FF5E) to ASCII and the ideographic space to a space, nothing else."""
    return "".join(" " if c == "\u3000" else chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" else c for c in text)


def ocrbench_right(answer: str, gold, dataset: str) -> bool:
    """A gold answer (any of a list) contained in the answer: HME100k with all spaces removed and case kept;
    the rest lower-cased, full-width folded, newlines as spaces."""
    golds = gold if isinstance(gold, list) else [gold]
    if dataset == "HME100k":
        pred = answer.strip().replace("\n", " ").replace(" ", "")
        return any(g.strip().replace("\n", " ").replace(" ", "") in pred for g in golds)
    pred = _fold_fullwidth(answer).lower().strip().replace("\n", " ")
    return any(_fold_fullwidth(g).lower().strip().replace("\n", " ") in pred for g in golds)


def ocrbench(entries, notes) -> dict:
    """`ocrbench_accuracy`: right answers / 1000, whatever the number of documents (OCRBench has 1000)."""
    right = 0
    for e in entries:
        if e.field("question_type") not in OCRBENCH_TYPES:
            raise EvalDataError(f"{e.where}: `question_type` {e.doc['question_type']!r} is none of OCRBench's 10")
        right += ocrbench_right(e.answer, e.field("answer"), e.field("dataset"))
    if len(entries) != 1000:
        notes.append(f"OCRBench divides the right answers by 1000, as lmms-eval does, whatever the number of "
                     f"documents: this log has {len(entries)}")
    return {"ocrbench_accuracy": right / 1000}


def _vqa(entries, *, empty_is_zero: bool) -> dict:
    """EvalAI's processing (`vqa_answer_processor`, equal to lmms-eval's EvalAIAnswerProcessor) of the answer and
    every gold answer, then the mean over each gold left out of min(1, matches among the others / 3)."""
    scores = []
    for e in entries:
        answers = e.doc.get("answers")
        if answers is None:
            scores.append(0)
            continue
        pred = vqa_answer_processor(e.answer)
        golds = [vqa_answer_processor(a) for a in answers]
        accs = [min(1, float(sum(g == pred for j, g in enumerate(golds) if j != i)) / 3) for i in range(len(golds))]
        if not accs and not empty_is_zero:
            raise EvalDataError(f"{e.where}: `answers` is empty (lmms-eval's textvqa cannot score it)")
        scores.append(statistics.mean(accs) if accs else 0)
    return {"exact_match": mean(scores)}


def textvqa_val(entries, notes) -> dict:
    return _vqa(entries, empty_is_zero=False)


def vizwiz_vqa_val(entries, notes) -> dict:
    return _vqa(entries, empty_is_zero=True)


def ok_vqa_val2014(entries, notes) -> dict:
    return _vqa(entries, empty_is_zero=True)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute: 1 each)."""
    if len(a) > len(b):
        a, b = b, a
    row = list(range(len(a) + 1))
    for i, cb in enumerate(b):
        new = [i + 1]
        for j, ca in enumerate(a):
            new.append(row[j] if ca == cb else 1 + min(row[j], row[j + 1], new[-1]))
        row = new
    return row[-1]


def anls(prediction: str, answers: list) -> float:
    """lmms-eval's `anls`: 1 - the least normalised edit distance to a gold answer (both sides stripped,
    lower-cased, whitespace runs as one space; divided by the longer *unnormalised* length, as upper-cased),
    0 below 0.5."""
    values = []
    for answer in answers:
        gold, pred = " ".join(answer.strip().lower().split()), " ".join(prediction.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(levenshtein(gold, pred)) / float(length))
    result = 1 - min(values)
    return 0 if result < 0.5 else result


def docvqa_val(entries, notes) -> dict:
    scores = []
    for e in entries:
        answers = e.field("answers")
        if not isinstance(answers, list) or not answers:
            raise EvalDataError(f"{e.where}: `answers` must be a non-empty list of strings")
        scores.append(anls(e.answer, answers))
    return {"anls": mean(scores)}


def gqa(entries, notes) -> dict:
    """exact_match ignoring case and ASCII punctuation."""
    return {"exact_match": mean([exact_match(e.answer, str(e.field("answer"))) for e in entries])}
