"""Metrics against the official scripts: hand-derived tables, and the scripts transcribed as oracles
(tests/official_vqa.py, which says how they are kept independent of mmmerge.eval.metrics)."""

import random

import pytest

from mmmerge.eval import metrics as M
from official_vqa import m4c_process, m4c_textvqa, official_question_accuracy, official_report, py2_round

# ---------------------------------------------------------------------------------------------- VQA accuracy
YES9_NO1 = ["yes"] * 9 + ["no"]
# (prediction, ten human answers, score derived by hand from vqaEval.py)
VQA_CASES = [
    ("yes", ["yes"] * 10, 1.0),
    ("Yes", ["yes"] * 10, 0.0),               # all ten agree: nothing is normalised, "Yes" != "yes"
    ("yes.", ["yes"] * 10, 0.0),              # ... nor is the trailing period removed
    (" yes\n", ["yes"] * 10, 1.0),            # newline -> space, then strip: always
    ("Yes", ["yes"] * 9 + [" yes"], 0.0),     # stripped before the "all the same?" test (the 2021 fix)
    ("YES", ["yes"] * 9 + ["Yes"], 1.0),      # answers differing only in case: normalised, all "yes"
    ("Yes", YES9_NO1, 1.0),
    ("yes!", YES9_NO1, 1.0),                  # "!" not touching a space -> " " -> split away
    ("no", YES9_NO1, 0.3),                    # 9 leave-outs see one "no" (1/3), one sees none
    ("maybe", YES9_NO1, 0.0),
    ("two", ["2"] * 2 + ["3"] * 8, 0.6),      # number word; (2 * 1/3 + 8 * 2/3) / 10
    ("2", ["2"] * 3 + ["3"] * 7, 0.9),        # (3 * 2/3 + 7 * 1) / 10
    ("ten", ["10"] * 5 + ["ten"] * 5, 1.0),
    ("none", ["0"] * 3 + ["1"] * 7, 0.9),     # "none" is the number 0
    ("a dog", ["dog"] * 4 + ["cat"] * 6, 1.0),  # articles dropped
    ("a", ["the"] * 3 + ["cat"] * 7, 0.9),    # an article alone normalises to "", as "the" does
    ("dont", ["don't"] * 4 + ["no"] * 6, 1.0),  # contraction expanded; the apostrophe is not punctuation
    ("Im", ["I'm"] * 4 + ["no"] * 6, 0.0),    # key "Im" has a capital and never matches a lower-cased word
    ("mans", ["man's"] * 5 + ["man"] * 5, 0.0),
    ("1.5", ["1.5"] * 3 + ["2"] * 7, 0.9),    # a period before a digit stays
    ("1.5.", ["1.5"] * 3 + ["2"] * 7, 0.9),   # the last one goes
    ("st. louis", ["st louis"] * 3 + ["rome"] * 7, 0.9),
    ("1,000", ["1000"] * 4 + ["many"] * 6, 1.0),  # comma between digits: all punctuation deleted
    ("red,blue", ["red blue"] * 3 + ["red"] * 7, 0.9),  # a comma touching no space becomes a space
    ("red, blue", ["red blue"] * 3 + ["red"] * 7, 0.9),  # ... touching one is deleted
    ("t-shirt", ["t shirt"] * 3 + ["shirt"] * 7, 0.9),
    ("t - shirt", ["t shirt"] * 3 + ["shirt"] * 7, 0.9),
    ("tshirt", ["t-shirt"] * 3 + ["shirt"] * 7, 0.0),
    ("10:30", ["10:30"] * 3 + ["noon"] * 7, 0.9),  # the colon is not in the list
    ("10 30", ["10:30"] * 3 + ["noon"] * 7, 0.0),
    ("(a) cat", ["cat"] * 3 + ["dog"] * 7, 0.9),
    ("cat(s)", ["cat s"] * 3 + ["dog"] * 7, 0.9),
]


@pytest.mark.parametrize("pred,answers,expected", VQA_CASES)
def test_vqa_accuracy_hand_table(pred, answers, expected):
    assert M.vqa_accuracy(pred, answers) == pytest.approx(expected, abs=1e-12)
    assert M.vqa_accuracy(pred, answers) == official_question_accuracy(pred, answers)  # bit for bit


def test_vqa_normalize_quirks():
    assert M.vqa_normalize("a" + "." * 40) == "a" + "." * 8  # the period rule runs at most 32 times
    assert M.vqa_normalize("1.\u0665") == "1\u0665"  # Python 2 \d is ASCII: a period before an Arabic digit goes
    assert M.vqa_normalize("The Two Dogs") == "2 dogs"
    assert M.vqa_normalize("somebody'd") == "somebodyd"  # the table maps it backwards
    assert M.vqa_normalize("it's #1 & $5 %") == "it's #1 & $5 %"  # not punctuation to the script


WORDS = ["yes", "no", "Yes", "a", "the", "an", "two", "2", "ten", "none", "dont", "don't", "Im", "1.5", "3,5",
         "st.", "t-shirt", "red,", "!", "?", "(", ")", "1,000", "man's", "10:30", ".", ",", "-", " ", "\t", "\n",
         "\u0665", "cat", "dog", "whats", "Whats", "oclock"]


def random_answer(rng):
    sep = rng.choice(["", " ", " ", "  "])
    return sep.join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))


def test_vqa_accuracy_matches_the_script_on_random_strings():
    rng = random.Random(0)
    differ = 0
    for _ in range(1500):
        pool = [random_answer(rng) for _ in range(rng.randint(1, 4))]
        answers = [rng.choice(pool) for _ in range(10)]
        pred = rng.choice(pool + [random_answer(rng)])
        assert M.vqa_accuracy(pred, answers) == official_question_accuracy(pred, answers), (pred, answers)
        differ += M.vqa_accuracy(pred, answers) != float(pred.strip() in [a.strip() for a in answers])
    assert differ > 50  # the strings exercise the normalisation, not just exact matches


# ---------------------------------------------------------------------------------------------- aggregation
def test_python2_rounding():
    assert M.round_py2(0.625) == 0.63 and round(0.625, 2) == 0.62  # exact half: away from zero, not to even
    assert M.round_py2(3.125) == 3.13
    assert M.round_py2(2.675) == 2.67  # 2.67499999... in binary
    assert M.round_py2(1.005) == 1.0
    rng = random.Random(1)
    for _ in range(2000):
        x = rng.randint(0, 10 ** 6) / rng.choice([8, 16, 32, 160, 3, 7, 30])
        assert M.round_py2(x) == py2_round(x), x


def test_vqa_aggregate_rounds_as_python2():
    scores = [1.0] + [0.0] * 31  # 100 / 32 = 3.125 exactly
    rep = M.vqa_aggregate(scores, ["yes/no"] * 32, ["is the"] * 32)
    assert rep == {"overall": 3.13, "perAnswerType": {"yes/no": 3.13}, "perQuestionType": {"is the": 3.13}}


def test_vqa_aggregate_matches_the_script():
    rng = random.Random(2)
    preds, gts, at, qt = [], [], [], []
    for _ in range(500):
        pool = [random_answer(rng) for _ in range(rng.randint(1, 3))]
        gts.append([rng.choice(pool) for _ in range(10)])
        preds.append(rng.choice(pool + ["yes"]))
        at.append(rng.choice(["yes/no", "number", "other"]))
        qt.append(rng.choice(["what is", "how many", "is the", "none of the above"]))
    scores = [M.vqa_accuracy(p, g) for p, g in zip(preds, gts)]
    assert M.vqa_aggregate(scores, at, qt) == official_report(preds, gts, at, qt)


# ---------------------------------------------------------------------------------------------- TextVQA (m4c)
TEXTVQA_CASES = [
    ("Coca-Cola", ["coca cola"] * 3 + ["pepsi"] * 7, 0.9),
    ("Yes", ["yes"] * 10, 1.0),            # always processed here, unlike vqaEval
    ("man's", ["man's"] * 3 + ["man"] * 7, 0.9),
    ("1,000", ["1000"] * 4 + ["x"] * 6, 1.0),  # commas dropped first
    ("what?", ["what"] * 3 + ["x"] * 7, 0.9),
    ("STOP.", ["stop"] * 10, 1.0),
    ("the", ["a"] * 3 + ["x"] * 7, 0.9),
    ("nothing", ["stop"] * 10, 0.0),
]


@pytest.mark.parametrize("pred,answers,expected", TEXTVQA_CASES)
def test_textvqa_accuracy_hand_table(pred, answers, expected):
    assert M.textvqa_accuracy(pred, answers) == pytest.approx(expected, abs=1e-12)
    assert M.textvqa_accuracy(pred, answers) == m4c_textvqa(pred, answers)


def test_textvqa_matches_m4c_on_random_strings():
    rng = random.Random(3)
    for _ in range(1000):
        pool = [random_answer(rng) for _ in range(rng.randint(1, 4))]
        answers = [rng.choice(pool) for _ in range(10)]
        pred = rng.choice(pool + [random_answer(rng)])
        assert M.textvqa_accuracy(pred, answers) == m4c_textvqa(pred, answers), (pred, answers)
        assert M.vqa_answer_processor(pred) == m4c_process(pred)


# ---------------------------------------------------------------------------------------------- GQA, POPE, ScienceQA
def test_gqa():
    assert [M.gqa_answer(t) for t in [" Yes.", "Left side..", "The Dog", "no"]] == ["yes", "left side", "the dog", "no"]
    rep = M.gqa_metrics(["yes", "no", "dog", "cat"], ["yes", "yes", "dog", "dog"],
                        ["verify", "logical", "query", "query"], ["attr", "obj", "cat", "cat"])
    assert rep["accuracy"] == 50.0 and rep["binary"] == 50.0 and rep["open"] == 50.0
    assert rep["perStructuralType"] == {"logical": 0.0, "query": 50.0, "verify": 100.0}
    assert rep["perSemanticType"] == {"attr": 100.0, "cat": 50.0, "obj": 0.0}
    # eval.py: float(sum(l)) / len(l) * 100, in that order
    assert M.gqa_metrics(["a"] * 7 + ["b"] * 23, ["a"] * 30, ["query"] * 30, ["x"] * 30)["accuracy"] == 7 / 30 * 100


@pytest.mark.parametrize("text,expected", [
    ("Yes", "yes"), ("No", "no"), ("no", "no"), ("NO", "yes"), ("Nope", "yes"), ("No, there is not.", "no"),
    ("There is no dog.", "no"), ("It is not there", "no"), ("Yes, there is a dog. No other.", "yes"),
    ("no.", "no"), ("No.", "no"), ("yes, no", "no"), ("", "yes")])
def test_pope_answer(text, expected):
    assert M.pope_answer(text) == expected


def test_pope_metrics_by_hand():
    rep = M.pope_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert (rep["tp"], rep["fp"], rep["tn"], rep["fn"]) == (2, 1, 1, 1)
    assert rep["accuracy"] == pytest.approx(60.0) and rep["yes_ratio"] == pytest.approx(60.0)
    assert rep["precision"] == pytest.approx(200 / 3) and rep["recall"] == pytest.approx(200 / 3)
    assert rep["f1"] == pytest.approx(200 / 3)


@pytest.mark.parametrize("text,n,expected", [
    ("A", 4, 0), ("B. cat", 4, 1), ("The answer is C.", 4, 2), ("The answer is C", 4, -1), ("E", 3, -1),
    ("a", 4, -1), ("The answer is A. The answer is B.", 4, -1), ("B.cat", 4, -1), ("D", 4, 3), (" A", 4, -1)])
def test_scienceqa_choice(text, n, expected):
    assert M.scienceqa_choice(text, n) == expected


def test_scienceqa_metrics():
    rep = M.scienceqa_metrics([True, False, True], ["natural science", "social science", "natural science"])
    assert rep == {"accuracy": pytest.approx(200 / 3), "perSubject": {"natural science": 100.0, "social science": 0.0}}
