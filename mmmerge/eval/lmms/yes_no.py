"""Yes/no benchmarks as lmms-eval scores them: POPE (lmms_eval/tasks/pope/utils.py) and MME (mme/utils.py)."""

from __future__ import annotations

from ..tasks import EvalDataError

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR")


def _gold_yes_no(entry, text: str) -> str:
    if text not in ("yes", "no"):
        raise EvalDataError(f"{entry.where}: `answer` is {text!r}; this task's answers are yes or no")
    return text


def pope(entries, notes) -> dict:
    """The answer lower-cased is compared with "yes"/"no" as it is: "Yes." is neither, so it is wrong and counts
    as neither a positive nor a negative prediction. lmms-eval's `pope_yes_ratio` is the share of questions whose
    *ground truth* is yes (not the model's yes-ratio that POPE's paper reports). Fractions, not percent."""
    pairs = [(e.answer.lower().strip(), _gold_yes_no(e, str(e.field("answer")).lower().strip())) for e in entries]
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g == "yes" for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp > 0 else 0
    recall = tp / (tp + fn) if tp + fn > 0 else 0
    gold_yes = sum(g == "yes" for _, g in pairs)
    return {"pope_accuracy": sum(1.0 if p == g else 0.0 for p, g in pairs) / len(pairs),
            "pope_precision": precision, "pope_recall": recall,
            "pope_f1_score": 2 * (precision * recall) / (precision + recall) if precision + recall > 0 else 0,
            "pope_yes_ratio": gold_yes / len(pairs)}


def mme_label(answer: str) -> str:
    """Otter's parse (mme/utils.py parse_pred_ans): lower case, periods removed; yes/no, or y/n alone, or
    "yes" / "no" inside the first four characters (yes first); else "other"."""
    text = answer.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def _mme_score(entries) -> float:
    """Σ over categories (first-seen order) of the mean over question_ids of acc + acc+, each in 0-100 ×2."""
    per_category: dict = {}
    for e in entries:
        per_category.setdefault(e.field("category"), {}).setdefault(e.field("question_id"), []).append(e)
    total = 0
    for category, questions in per_category.items():
        score = 0
        for qid, pair in questions.items():
            if len(pair) != 2:
                raise EvalDataError(f"{pair[0].where}: MME scores questions in pairs, but {category} question_id "
                                    f"{qid!r} has {len(pair)} document(s) in this log")
            scores = [1.0 if mme_label(e.answer) == _gold_yes_no(e, str(e.field("answer")).lower().strip()
                                                                 .replace(".", "")) else 0.0 for e in pair]
            score += (sum(scores) == 2) * 100.0 + sum(scores) / len(scores) * 100.0
        total += score / len(questions)
    return total


def mme(entries, notes) -> dict:
    """`mme_perception_score` (0-2000 over the 10 perception subtasks) and `mme_cognition_score` (0-800 over
    the other 4); a score with no document in the log is left out, as lmms-eval leaves it out."""
    perception = [e for e in entries if e.field("category") in MME_PERCEPTION]
    cognition = [e for e in entries if e.field("category") not in MME_PERCEPTION]
    out = {}
    if perception:
        out["mme_perception_score"] = _mme_score(perception)
    if cognition:
        out["mme_cognition_score"] = _mme_score(cognition)
    return out
