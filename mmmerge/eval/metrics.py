"""Metrics that equal the published evaluation scripts, quirks included.

Which script each function follows:

- `vqa_accuracy`, `vqa_aggregate`: the official VQA evaluation (GT-Vision-Lab/VQA,
  PythonEvaluationTools/vqaEvaluation/vqaEval.py, as fixed in March 2021), a Python 2 script. Its normalisation
  runs only when the ground-truth answers of a question differ; its regular expressions are ASCII (`\\d` is
  0-9 in Python 2); its period rule removes at most 32 periods (it passes `re.UNICODE`, 32, where `sub` takes
  `count`); its rounding is Python 2's (half away from zero).
- `vqa_answer_processor`: the answer post-processing LLaVA and lmms-eval apply to a generated answer before
  it is written to a VQAv2 results file (EvalAI's processor, as in MMF / LLaVA's m4c_evaluator).
- `textvqa_accuracy`: the TextVQA evaluator used by MMF/M4C and LLaVA (TextVQAAccuracyEvaluator): the same
  processor on the prediction and on every ground-truth answer, always, then the leave-one-out average.
- `gqa_answer`, `gqa_metrics`: LLaVA's GQA conversion (strip, trailing periods dropped, lower case), then the
  official GQA eval.py accuracy (exact string match), with its binary/open split and per-type accuracies.
- `pope_answer`, `pope_metrics`: the POPE rule (POPE's evaluate.py, copied into LLaVA's eval_pope.py).
- `scienceqa_choice`, `scienceqa_metrics`: LLaVA's eval_science_qa.py parsing of an option letter; an
  unparseable answer counts as wrong (its `get_pred_idx` returns -1 before the unreachable random choice).
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

# ----------------------------------------------------------------------------------------------------------
# Tables of the official VQA script (vqaEval.py). The contraction keys with capitals (`Im`, `Ive`, `Id've`,
# `I'dve`) can never match, because words are lower-cased before the lookup: kept as the script has them.
_CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've
it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've
oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've
shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've
somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've
someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd
somethingd've=something'd've something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd theyd've=they'd've
they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've
we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've
whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've
wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've
wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've
youll=you'll youre=you're youve=you've""".split())
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
# Note: no period, apostrophe, colon, #, $, %, &, *, ~, ^ or | in this list.
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The script's period pattern starts with `(?!<=\d)`, a lookahead (not a lookbehind) that always holds in
# front of a period; what remains is "a period not followed by a digit". It runs with count=32 (see above).
_PERIOD_ASCII = re.compile(r"\.(?![0-9])")
_PERIOD_UNICODE = re.compile(r"\.(?!\d)")  # MMF's copy runs on Python 3, where \d is any Unicode digit
_COMMA_BETWEEN_DIGITS = re.compile(r"[0-9],[0-9]")
_PERIOD_COUNT = 32


def _punctuation(text: str, strip_all: bool, period: re.Pattern) -> str:
    """processPunctuation: each mark is deleted when it touches a space somewhere in the original text (or
    when the text has a comma between digits anywhere), else it becomes a space; then lone periods go."""
    out = text
    for p in _PUNCT:
        out = out.replace(p, "" if strip_all or p + " " in text or " " + p in text else " ")
    return period.sub("", out, count=_PERIOD_COUNT)


def _digits_articles(text: str) -> str:
    """processDigitArticle: lower case, split on whitespace, number words -> digits, drop articles, then
    expand contractions, joined by single spaces."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_normalize(answer: str) -> str:
    """The official script's normalisation of one answer (processPunctuation then processDigitArticle)."""
    strip_all = _COMMA_BETWEEN_DIGITS.search(answer) is not None
    return _digits_articles(_punctuation(answer, strip_all, _PERIOD_ASCII))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _leave_one_out(prediction: str, answers: list[str]) -> float:
    """Average over each human answer left out of min(1, #other humans who gave the prediction / 3).

    The script leaves one answer *dict* out by equality; answer dicts carry a unique `answer_id`, so exactly
    one is left out each time: leaving out by position is the same thing."""
    if not answers:
        raise ValueError("no ground-truth answers")
    accs = []
    for i in range(len(answers)):
        matches = sum(1 for j, a in enumerate(answers) if j != i and a == prediction)
        accs.append(min(1, float(matches) / 3))
    return float(sum(accs)) / len(accs)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Per-question VQA accuracy in [0, 1], exactly as the official vqaEval.py computes it.

    Newlines and tabs become spaces and both sides are stripped. Only when the (stripped) human answers are
    not all the same are the answers and the prediction normalised (`vqa_normalize`); when all ten agree, the
    comparison is on the raw stripped strings, so "Yes" or "yes." scores 0 against ten "yes"."""
    gts = [_clean(a) for a in answers]
    res = _clean(prediction)
    if len(set(gts)) > 1:
        gts = [vqa_normalize(a) for a in gts]
        res = vqa_normalize(res)
    return _leave_one_out(res, gts)


def round_py2(x: float, ndigits: int = 2) -> float:
    """Python 2's round(), which the official script runs under: the exact binary value rounded half away
    from zero (Python 3's round() goes half to even: round(12.125, 2) is 12.13 here, 12.12 there)."""
    q = Decimal(1).scaleb(-ndigits)
    return float(Decimal(x).quantize(q, rounding=ROUND_HALF_UP))


def _percent(accs: list[float]) -> float:
    return round_py2(100 * float(sum(accs)) / len(accs), 2)


def vqa_aggregate(scores: list[float], answer_types: list[str], question_types: list[str]) -> dict:
    """The official report: percent with two decimals for all questions, per answer type and per question
    type, each the mean of per-question accuracies in the order given (the annotation file's order)."""
    if not scores:
        raise ValueError("no questions to aggregate")
    per_ans: dict[str, list[float]] = {}
    per_q: dict[str, list[float]] = {}
    for s, a, q in zip(scores, answer_types, question_types, strict=True):
        per_ans.setdefault(a, []).append(s)
        per_q.setdefault(q, []).append(s)
    return {"overall": _percent(scores),
            "perAnswerType": {k: _percent(v) for k, v in per_ans.items()},
            "perQuestionType": {k: _percent(v) for k, v in per_q.items()}}


# ----------------------------------------------------------------------------------------------------------
# EvalAI's answer processor (MMF / LLaVA m4c_evaluator / lmms-eval): always applied, Python 3 regexes.


def vqa_answer_processor(text: str) -> str:
    """EvalAI's processing of a generated answer: lower case, commas and question marks removed, "'s" split
    off, whitespace cleaned, then the VQA punctuation, number, article and contraction rules."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = _clean(text)
    # EvalAI also tests for commas between digits here, which the first line has already removed
    return _digits_articles(_punctuation(text, False, _PERIOD_UNICODE))


def textvqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Per-question TextVQA accuracy in [0, 1] (MMF/M4C TextVQAAccuracyEvaluator, as LLaVA and lmms-eval use
    it): `vqa_answer_processor` on the prediction and on every answer, then the leave-one-out average."""
    return _leave_one_out(vqa_answer_processor(prediction), [vqa_answer_processor(a) for a in answers])


def mean_percent(scores: list[float]) -> float:
    """mean * 100, unrounded, in that order as the TextVQA, GQA and ScienceQA scripts compute it (they print
    it with two decimals)."""
    if not scores:
        raise ValueError("no questions to aggregate")
    return float(sum(scores)) / len(scores) * 100


# ----------------------------------------------------------------------------------------------------------
def gqa_answer(text: str) -> str:
    """LLaVA's GQA conversion of a generated answer: stripped, trailing periods removed, lower case."""
    return text.strip().rstrip(".").lower()


def gqa_metrics(predictions: list[str], answers: list[str], structural_types: list[str],
                semantic_types: list[str]) -> dict:
    """The official GQA eval.py accuracy (percent): exact match of prediction and answer; `binary` and `open`
    (structural type "query" is open, the rest binary) and accuracy per structural and semantic type."""
    scores = [float(p == a) for p, a in zip(predictions, answers, strict=True)]
    per_struct: dict[str, list[float]] = {}
    per_sem: dict[str, list[float]] = {}
    split: dict[str, list[float]] = {"binary": [], "open": []}
    for s, st, se in zip(scores, structural_types, semantic_types, strict=True):
        per_struct.setdefault(st, []).append(s)
        per_sem.setdefault(se, []).append(s)
        split["open" if st == "query" else "binary"].append(s)
    avg = lambda v: mean_percent(v) if v else 0.0  # noqa: E731  (eval.py: avg of an empty list is 0)
    return {"accuracy": avg(scores), "binary": avg(split["binary"]), "open": avg(split["open"]),
            "perStructuralType": {k: avg(v) for k, v in sorted(per_struct.items())},
            "perSemanticType": {k: avg(v) for k, v in sorted(per_sem.items())}}


# ----------------------------------------------------------------------------------------------------------
def pope_answer(text: str) -> str:
    """POPE's rule: keep the text before the first period, delete commas, split on single spaces; "no" when
    one of the words is exactly "No", "no" or "not", else "yes" (so "NO" and "Nope" count as yes)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(predictions: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 and the ratio of "yes" predictions, in percent, as POPE reports them
    (positive = "yes"; a label other than "no" counts as yes). An undefined precision/recall/F1 is 0."""
    pred = [p != "no" for p in predictions]
    gold = [g != "no" for g in labels]
    if not pred or len(pred) != len(gold):
        raise ValueError("POPE needs one prediction per label")
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    tn = sum(not p and not g for p, g in zip(pred, gold))
    fn = sum(not p and g for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100.0 * (tp + tn) / len(pred), "precision": 100.0 * precision, "recall": 100.0 * recall,
            "f1": 100.0 * f1, "yes_ratio": 100.0 * sum(pred) / len(pred),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


# ----------------------------------------------------------------------------------------------------------
OPTIONS = ("A", "B", "C", "D", "E")
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def scienceqa_choice(text: str, num_choices: int) -> int:
    """The option index LLaVA's eval_science_qa.py reads from an answer, -1 when it reads none: the answer is
    exactly a letter A-E; or starts with a letter and ". "; or has exactly one "The answer is X" followed by a
    character. A letter beyond the question's choices is -1."""
    if text in OPTIONS:
        letter = text
    elif len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _THE_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else ""
    return OPTIONS.index(letter) if letter and letter in OPTIONS[:num_choices] else -1


def scienceqa_metrics(correct: list[bool], subjects: list[str]) -> dict:
    """Accuracy in percent over the questions given (ScienceQA-IMG: the test questions with an image), and
    per subject."""
    per: dict[str, list[float]] = {}
    for c, s in zip(correct, subjects, strict=True):
        per.setdefault(s, []).append(float(c))
    return {"accuracy": mean_percent([float(c) for c in correct]),
            "perSubject": {k: mean_percent(v) for k, v in sorted(per.items())}}
