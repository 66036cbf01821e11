"""An lmms-eval task's documents from a JSONL file, scored by lmms-eval's rule: what `mmmerge search` objectives
(and `evaluate`) run on any task `mmmerge score` knows.

One line per document: the dataset row in the task's lmms-eval schema (the fields its scorer reads: `answer`,
`answers`, `options`, `category` ...), plus `image` (a path, relative to --images or else to the file) and
`question` (the text the model is asked, as lmms-eval's doc_to_text builds it: the default prompt is
"{question}" alone). A document's id is its line's position (doc_id), so MME's paired rows may share a
`question_id`. Metrics are the task's from the `eval/lmms` table, so any reader of the task's data (a parquet
folder too) plugs in by handing its rows to the same scorer.
"""

from __future__ import annotations

from pathlib import Path

from ..tasks import EvalDataError, EvalTask, Sample
from .log import Entry
from .table import LMMS_TASKS

# Tasks whose headline is the mean of independent per-document scores: a document alone has that score. The
# others score documents together (MME's pairs, MMBench's circular copies, MMStar's categories, POPE's F1,
# OCRBench's /1000, MMMU's seeded draws in document order), so their per-question score is left empty.
PER_DOCUMENT = frozenset({"ai2d", "scienceqa_img", "realworldqa", "chartqa", "textvqa_val", "vizwiz_vqa_val",
                          "ok_vqa_val2014", "docvqa_val", "gqa"})


# what a headline is out of, by the table's unit (MME's perception score is out of 2000)
FULL_SCALE = {"fraction": 1.0, "percent": 100.0, "points": 2000.0}


class LmmsDocsTask(EvalTask):
    """An lmms-eval task (a name of the `eval/lmms` table) read from a JSONL of its documents."""
    instruction = ""

    def __init__(self, name: str):
        if name not in LMMS_TASKS:
            raise EvalDataError(f"task {name!r}: not an lmms-eval task mmmerge scores ({', '.join(LMMS_TASKS)})")
        self.name, self.spec = name, LMMS_TASKS[name]
        self.headline = self.spec.headline
        self.full_scale = FULL_SCALE[self.spec.unit]

    @property
    def prompt(self) -> str:
        return "{question}"

    def read(self, questions=None, annotations=None, images=None):
        from ...io import read_jsonl

        if questions is None:
            raise EvalDataError(f"task {self.name} needs its documents (a JSONL file: the dataset rows with "
                                f"`image` and `question`)")
        path = Path(questions)
        if not path.is_file():
            raise EvalDataError(f"{path}: no such file (the documents of {self.name})")
        folder = Path(images) if images is not None else path.parent
        samples = []
        for doc_id, (n, row) in enumerate(read_jsonl(path, EvalDataError)):
            where = f"{path}: line {n}"
            if not isinstance(row, dict) or not isinstance(row.get("image"), str) or "question" not in row:
                raise EvalDataError(f"{where}: a document needs `image` (a path) and `question` (the text asked)")
            doc = {k: v for k, v in row.items() if k != "image"}
            samples.append(Sample(doc_id, folder / row["image"], str(row["question"]), doc, {"where": where}))
        if samples:  # every field the scorer reads, checked before any model runs
            self.metrics(samples, [""] * len(samples), [])
        return samples

    def _entries(self, samples, answers) -> list[Entry]:
        return [Entry(s.question_id, s.target, a.strip(), s.info.get("where", f"document {s.question_id}"))
                for s, a in zip(samples, answers, strict=True)]

    def score(self, answer, sample):
        if self.name not in PER_DOCUMENT:
            return None
        return float(self.spec.scorer(self._entries([sample], [answer]), [])[self.headline])

    def metrics(self, samples, answers, scores):
        return self.spec.scorer(self._entries(samples, answers), [])
