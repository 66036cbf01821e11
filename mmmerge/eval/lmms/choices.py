"""Multiple-choice benchmarks that lmms-eval scores one document at a time: AI2D, ScienceQA-IMG, MMStar,
RealWorldQA and SEED-Bench (each task's utils.py and YAML in lmms_eval/tasks/)."""

from __future__ import annotations

import re
import string

from ..tasks import EvalDataError
from .letters import mcq_letter

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_match(prediction: str, gold: str) -> float:
    """lmms-eval's `exact_match` with ignore_case and ignore_punctuation (HF evaluate's rule): both sides
    lower-cased, ASCII punctuation deleted, then compared."""
    return float(prediction.lower().translate(_NO_PUNCTUATION) == gold.lower().translate(_NO_PUNCTUATION))


def mean(scores: list) -> float:
    """lmms-eval's `mean` aggregation: sum / len."""
    return sum(scores) / len(scores)


def option_letter(entry, options_field: str) -> str:
    """The letter of the gold option: `answer` is the index into the options list."""
    options, index = entry.field(options_field), entry.field("answer")
    try:
        return [chr(ord("A") + i) for i in range(len(options))][int(index)]
    except (TypeError, ValueError, IndexError):
        raise EvalDataError(f"{entry.where}: `answer` {index!r} is not an index into the "
                            f"{len(options) if isinstance(options, list) else 'missing'} `{options_field}`") from None


_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")


def ai2d(entries, notes) -> dict:
    """The flexible-extract filter (a leading "X." becomes X; idempotent, so a log's filtered answer passes
    through unchanged), then exact_match against the gold letter."""
    scores = []
    for e in entries:
        m = _LEADING_LETTER.match(e.answer)
        scores.append(exact_match(m.group(1) if m else e.answer, option_letter(e, "options")))
    return {"exact_match": mean(scores)}


def scienceqa_img(entries, notes) -> dict:
    """LLaVA's parse as lmms-eval ports it: the answer is the letter (any case), or starts with an upper-case
    letter and a period ("B. ..." or "B.")."""
    scores = []
    for e in entries:
        target, pred = option_letter(e, "choices").strip().lower(), e.answer.strip()
        if pred.lower() == target:
            scores.append(1.0)
        elif len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
            scores.append(1.0 if pred[0].lower() == target else 0.0)
        else:
            scores.append(0.0)
    return {"exact_match": mean(scores)}


def mmstar(entries, notes) -> dict:
    """`mcq_letter` over A-D against the gold letter. Each category's score, and `average`, is the mean of
    per-l2_category accuracies (l2 categories in first-seen order), not of questions."""
    per_metric: dict = {}
    for e in entries:
        score = 1.0 if mcq_letter(e.answer, ["A", "B", "C", "D"]) == str(e.field("answer")).strip().upper() else 0.0
        l2 = e.field("l2_category")
        for metric in (e.field("category"), "average"):
            per_metric.setdefault(metric, {}).setdefault(l2, []).append(score)
    out = {}
    for metric, per_l2 in per_metric.items():
        accs = [sum(s) / len(s) for s in per_l2.values()]
        out[metric] = sum(accs) / len(accs)
    return {**{k: v for k, v in out.items() if k != "average"}, "average": out["average"]}


def realworldqa(entries, notes) -> dict:
    """Gold A-D: `mcq_letter` over A-D; any other gold (a number, a word): the answer lower-cased with trailing
    periods removed equals the gold lower-cased."""
    scores = []
    for e in entries:
        gold = str(e.field("answer")).strip()
        if gold.upper() in ("A", "B", "C", "D"):
            scores.append(1.0 if mcq_letter(e.answer, ["A", "B", "C", "D"]) == gold.upper() else 0.0)
        else:
            scores.append(1.0 if e.answer.lower().strip().rstrip(".") == gold.lower() else 0.0)
    return {"exact_match": mean(scores)}


def seedbench(entries, notes) -> dict:
    """The answer's first character (the whole answer when it is one character) against the gold letter,
    case-insensitive; `seed_image`, `seed_video` by `data_type`, and `seed_all`."""
    per_metric: dict = {}
    for e in entries:
        pred = e.answer.strip()
        pred = pred[0] if len(pred) > 1 else pred
        right = pred.lower().strip() == str(e.field("answer")).lower().strip()
        for metric in (f"seed_{e.field('data_type')}", "seed_all"):
            per_metric.setdefault(metric, []).append(right)
    return {k: sum(v) / len(v) for k, v in sorted(per_metric.items(), key=lambda kv: kv[0] == "seed_all")}
