"""Each document's own score in [0, 1], for eval's samples.jsonl and eval-compare's intervals and paired tests.

Where the headline is a mean over documents (accuracy, ANLS, VQA accuracy) a document's score is its term of
that mean: the task's scorer run on the document alone. Where it is not, the score is whether the document was
answered right by the task's rule: MME (the headline adds acc+ over pairs), MMBench (a question counts when all
its circular copies do: each copy gets its question's result), OCRBench (divided by 1000), POPE (F1), MMStar (a
mean of category means), MMMU (one generator draws for unreadable letters in document order).
"""

from __future__ import annotations

from . import mmbench, mmmu, open_answers, yes_no
from .table import LMMS_TASKS


def _mme(entries) -> list[float]:
    return [float(yes_no.mme_label(e.answer) == str(e.field("answer")).lower().strip().replace(".", ""))
            for e in entries]


def _mmbench(entries) -> list[float]:
    groups: dict = {}
    for e in entries:
        groups.setdefault(e.field("index") % mmbench.MAIN, []).append(e)
    right = {k: float(mmbench.all_copies_right(copies)) for k, copies in groups.items()}
    return [right[e.doc["index"] % mmbench.MAIN] for e in entries]


def _ocrbench(entries) -> list[float]:
    return [float(open_answers.ocrbench_right(e.answer, e.field("answer"), e.field("dataset"))) for e in entries]


def _mmmu(entries) -> list[float]:
    return [float(r) for r in mmmu.rights(entries)[0]]


# Tasks whose headline is the mean of independent per-document scores: a document alone has that score, and its
# sample log line carries it (lmms-eval's process_results field).
PER_DOCUMENT = frozenset({"ai2d", "scienceqa_img", "realworldqa", "chartqa", "textvqa_val", "vizwiz_vqa_val",
                          "ok_vqa_val2014", "docvqa_val", "gqa"})

_SPECIAL = {"mme": _mme, "mmbench_en_dev_static": _mmbench, "ocrbench": _ocrbench, "mmmu_val": _mmmu}
_PER_DOCUMENT_METRIC = {"pope": "pope_accuracy", "seedbench": "seed_all"}  # else the headline


def document_scores(task: str, entries) -> list[float]:
    """The score of each entry (in the order given)."""
    if task in _SPECIAL:
        return _SPECIAL[task](entries)
    spec = LMMS_TASKS[task]
    metric = _PER_DOCUMENT_METRIC.get(task, spec.headline)
    return [float(spec.scorer([e], [])[metric]) for e in entries]
