"""MMMU validation as lmms-eval scores it (lmms_eval/tasks/mmmu/utils.py, _task_utils/mmmu_mcq_utils.py), with
one deliberate difference: open questions.

Multiple choice: `mmmu_letter`; an answer it cannot read takes `random.choice` over the options from Python's
global generator, which lmms-eval seeds with 0 (its default `--seed`), drawn in document order: here a
`random.Random(0)` of its own, drawn in doc_id order. `mmmu_acc` is the accuracy over all questions (each
subject's accuracy weighted by its size, subjects in first-seen order), rounded to 5 decimals.

Open questions follow the official MMMU evaluation (MMMU-Benchmark/MMMU eval/eval_utils.py: the answer's key
phrases and the numbers in them, normalised, any one matching a gold answer). lmms-eval since mid-2025 keeps
only the first parsed value as a string and compares it character by character, so it scores every open answer
wrong; `mmmu_acc_lmms_eval` gives that number too, with a note.
"""

from __future__ import annotations

import ast
import random
import re

from ..tasks import EvalDataError
from .letters import mmmu_letter


def subject(entry) -> str:
    """extract_subset_name: `validation_Art_Theory_12` -> `Art_Theory`."""
    doc_id = str(entry.field("id"))
    m = re.search(rf"^{re.escape(doc_id.split('_')[0])}_(.+?)_\d+$", doc_id)
    if not m:
        raise EvalDataError(f"{entry.where}: MMMU id {doc_id!r} is not SPLIT_SUBJECT_NUMBER")
    return m.group(1)


def _options(entry) -> list:
    raw = entry.field("options")
    try:
        options = ast.literal_eval(raw) if isinstance(raw, str) else raw
    except (ValueError, SyntaxError):
        options = None
    if not isinstance(options, list):
        raise EvalDataError(f"{entry.where}: `options` must be a list of option texts, as a Python literal")
    return [str(o) for o in options]


# ------------------------------------------------------------------ the official MMMU rules for open answers
_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_KEYS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize(text: str) -> list:
    """A number (commas dropped) as a float rounded to 2 decimals; else lower case, one character padded with
    a space on either side (two forms) so it cannot match inside a word."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def open_answers(response: str) -> list:
    """parse_open_response: the shortest tail after a key phrase in each sentence (the last sentence also after
    "="), or the whole answer; plus every number in them; normalised."""
    text = response.strip().strip(".").lower()
    sentences = re.split(r"\.\s(?=[A-Z])|\n", text)
    keys, tails = list(_KEYS), []
    for i, sentence in enumerate(sentences):
        if i == len(sentences) - 1:
            keys.append("=")
        shortest = None
        for key in keys:
            if key in sentence:
                tail = sentence.split(key)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            tails.append(shortest)
    tails = tails or [text]
    found = list(tails)
    for tail in tails:
        found += _COMMAS.findall(tail) + _SCIENTIFIC.findall(tail) + _SIMPLE.findall(tail)
    return [v for f in found for v in normalize(f)]


def open_right(gold, predictions: list) -> bool:
    """eval_open: a parsed string containing a normalised gold string, or a parsed number equal to a gold one."""
    golds = [v for g in (gold if isinstance(gold, list) else [gold]) for v in normalize(str(g))]
    for pred in predictions:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


# ----------------------------------------------------------------------------------------------- aggregation
def _accuracy(subjects: list[str], right: list[bool]) -> float:
    """calculate_ins_level_acc over evaluate_mmmu's per-subject accuracies, in first-seen subject order."""
    per: dict = {}
    for s, r in zip(subjects, right):
        per.setdefault(s, []).append(r)
    acc, count = 0, 0
    for rights in per.values():
        acc += sum(rights) / len(rights) * len(rights)
        count += len(rights)
    return round(acc / count if count else 0, 5)


def rights(entries) -> tuple[list[bool], list[bool]]:
    """Per document, in order: right by the official MMMU rules, and right as lmms-eval scores it (every open
    question wrong); one generator seeded 0 draws for unreadable letters in document order."""
    rng = random.Random(0)
    right, lmms_right = [], []
    for e in entries:
        gold = e.field("answer")
        if e.field("question_type") == "multiple-choice":
            pred = mmmu_letter(e.answer, _options(e), rng)
            ok = pred in gold if isinstance(gold, list) else pred == gold  # eval_multi_choice
            right.append(ok)
            lmms_right.append(ok)
        else:
            right.append(open_right(gold, open_answers(e.answer)))
            lmms_right.append(False)
    return right, lmms_right


def mmmu_val(entries, notes) -> dict:
    subjects = [subject(e) for e in entries]
    right, lmms_right = rights(entries)
    open_count = sum(e.field("question_type") != "multiple-choice" for e in entries)
    out = {"mmmu_acc": _accuracy(subjects, right)}
    if open_count:
        out["mmmu_acc_lmms_eval"] = _accuracy(subjects, lmms_right)
        notes.append(f"{open_count} open question(s) scored by the official MMMU rule; lmms-eval (commit "
                     f"75571cf) scores every open answer wrong: mmmu_acc_lmms_eval = {out['mmmu_acc_lmms_eval']}")
    return out
