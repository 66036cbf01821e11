"""`mmmerge score`: an lmms-eval sample log rescored without a model, as lmms-eval's task code scores it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..tasks import EvalDataError
from .log import entries_from_rows, read_log
from .table import LMMS_TASKS


@dataclass
class Scores:
    task: str
    headline: float | None  # None when the log holds no document the headline metric covers
    headline_metric: str
    unit: str
    metrics: dict
    documents: int
    notes: list = field(default_factory=list)

    def summary(self) -> dict:
        """What `--json` prints: lmms-eval's metric names and units."""
        return {"task": self.task, "headline": self.headline, "metrics": self.metrics}

    def table(self) -> str:
        width = max(len(k) for k in self.metrics)
        digits = 4 if self.unit == "fraction" else 2
        lines = [f"{self.task}: {self.documents} documents, scored as lmms-eval scores them ({self.unit})"]
        lines += [f"  {k:<{width}}  {v:>10.{digits}f}{'  <- headline' if k == self.headline_metric else ''}"
                  for k, v in self.metrics.items()]
        return "\n".join(lines)


def score(task: str, samples) -> Scores:
    """Rescore an lmms-eval 0.3 `--log_samples` JSONL file (or its lines as dicts) for `task` (an lmms-eval
    task name from `LMMS_TASKS`)."""
    if task not in LMMS_TASKS:
        raise EvalDataError(f"task {task!r}: not one mmmerge scores; choose from {', '.join(LMMS_TASKS)}")
    if isinstance(samples, (str, Path)):
        entries = read_log(samples)
    else:
        entries = entries_from_rows([(f"samples[{i}]", row) for i, row in enumerate(samples)])
    spec, notes = LMMS_TASKS[task], []
    metrics = spec.scorer(entries, notes)
    return Scores(task, metrics.get(spec.headline), spec.headline, spec.unit, metrics, len(entries), notes)

