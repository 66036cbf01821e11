"""MMBench dev with circular evaluation, no GPT judge (`mmbench_en_dev_static`; lmms_eval/tasks/mmbench/
en_utils.py and mmbench_evals.py, eval_method="static").

A main question (index < 1e6) counts only when it and every circular copy (index + k·1e6, options rotated) are
right. Each copy's letter is first read by `mmbench_option`; a letter read that is wrong fails the question
at once; copies still unread then go to `mcq_letter` over their non-empty options A-D.
"""

from __future__ import annotations

import math

from ..tasks import EvalDataError
from .letters import mcq_letter, mmbench_option

MAIN = 1_000_000


def _absent(value) -> bool:
    """pandas.isna on one cell: None and NaN are absent; the string "nan" is an option like any other."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _choices(entry) -> dict:
    """build_choices: options A-D present in the row (E is never one; a missing key reads as the string "nan",
    as `doc.get(c, "nan")` gives it)."""
    return {c: entry.doc.get(c, "nan") for c in "ABCD" if not _absent(entry.doc.get(c, "nan"))}


def all_copies_right(copies) -> bool:
    """Every circular copy of one question answered right."""
    gold = [str(e.field("answer")) for e in copies]
    read = [mmbench_option(e.answer, _choices(e)) for e in copies]
    if any(r and r != g for r, g in zip(read, gold)):
        return False
    for e, r, g in zip(copies, read, gold):
        if not r and mcq_letter(e.answer, sorted(_choices(e))) != g:
            return False
    return True


def mmbench_en_dev_static(entries, notes) -> dict:
    """`gpt_eval_score`: percent of main questions whose copies are all right."""
    by_index: dict = {}
    for e in entries:
        index = e.field("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise EvalDataError(f"{e.where}: `index` must be an integer (MMBench's question index)")
        if index in by_index:
            raise EvalDataError(f"{e.where}: MMBench index {index} again (first at {by_index[index].where})")
        by_index[index] = e
    ordered = [by_index[i] for i in sorted(by_index)]
    mains = [e for e in ordered if e.doc["index"] < MAIN]
    if not mains:
        raise EvalDataError(f"{entries[0].where.rsplit(': line', 1)[0]}: no main question (index < {MAIN}) in the "
                            f"log: MMBench scores main questions with their circular copies")
    hits = [all_copies_right([e for e in ordered if e.doc["index"] % MAIN == m.doc["index"]]) for m in mains]
    return {"gpt_eval_score": sum(hits) / len(hits) * 100}
