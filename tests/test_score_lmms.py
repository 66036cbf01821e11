"""`mmmerge score`: lmms-eval 0.3 sample logs rescored, each task against values worked out by hand from
lmms-eval's task code (lmms_eval/tasks/<task>/utils.py at commit 75571cf); each case says why it is right or
wrong under that rule."""

import json
import random

import pytest

import mmmerge
from cli_run import one_line_error, run


def write_log(path, docs_answers, order=None):
    """An lmms-eval 0.3 --log_samples file: one line per document, as its evaluator writes them."""
    lines = [{"doc_id": i, "doc": doc, "target": doc.get("answer", ""), "resps": [[answer]],
              "filtered_resps": [answer]} for i, (doc, answer) in enumerate(docs_answers)]
    path.write_text("".join(json.dumps(lines[i]) + "\n" for i in (order or range(len(lines)))))
    return path


def scored(tmp_path, task, docs_answers, order=None):
    r = run("score", "--task", task, write_log(tmp_path / f"{task}.jsonl", docs_answers, order), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["task"] == task and set(out) == {"task", "headline", "metrics"}
    return out, r.stderr


def check(out, expected, headline):
    assert out["metrics"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert out["headline"] == pytest.approx(expected[headline], rel=1e-12)


def test_pope(tmp_path):
    docs = [({"question_id": i, "question": "q", "answer": g}, a) for i, (g, a) in enumerate([
        ("yes", "Yes"),             # "yes": true positive
        ("yes", "Yes."),            # "yes." is neither yes nor no: wrong, and no positive or negative
        ("no", " NO "),             # stripped, lower-cased: true negative
        ("no", "yes"),              # false positive
        ("yes", "no"),              # false negative
        ("yes", ""),                # empty: wrong, neither
    ])]
    out, _ = scored(tmp_path, "pope", docs)
    check(out, {"pope_accuracy": 2 / 6, "pope_precision": 1 / 2, "pope_recall": 1 / 2, "pope_f1_score": 0.5,
                "pope_yes_ratio": 4 / 6}, "pope_f1_score")  # lmms-eval's yes_ratio counts the gold yeses


def mme_pair(category, n, answers):
    return [({"question_id": f"{category}/{n}.png", "category": category, "question": "q", "answer": g}, a)
            for g, a in zip(("Yes", "No"), answers)]


def test_mme(tmp_path):
    docs = (mme_pair("existence", 1, ("Yes, there is.", "No"))           # both right: acc 100 + acc+ 100
            + mme_pair("existence", 2, ("There is a dog", "n"))          # "ther": other; "n" is no: 50 + 0
            + mme_pair("OCR", 1, ("yes.", "Ｙｅｓ"))                      # full-width is "other": 50 + 0
            + mme_pair("code_reasoning", 1, ("not sure", "nope")))        # "no" in "not ": wrong; right: 50
    out, _ = scored(tmp_path, "mme", docs)
    # perception: existence (200 + 50) / 2 + OCR 50; cognition: code_reasoning 50
    check(out, {"mme_perception_score": 125 + 50, "mme_cognition_score": 50.0}, "mme_perception_score")


def test_mme_refuses_a_question_without_its_pair(tmp_path):
    path = write_log(tmp_path / "mme.jsonl", mme_pair("color", 1, ("Yes", "No"))[:1])
    one_line_error(run("score", "--task", "mme", path), "line 1", "pairs", "color")


def mmbench_doc(index, answer, options):
    return {"index": index, "question": "q", "answer": answer, "hint": None, "source": "s", "split": "dev",
            "category": "c", "L2-category": "l", **dict(zip("ABCD", options))}


def test_mmbench_circular_by_rule(tmp_path):
    opts = ["cat", "dog", "red", None]
    docs = [
        (mmbench_doc(0, "A", opts), "A"),                                   # lone letter
        (mmbench_doc(1_000_000, "B", opts), "The answer is dog"),           # one option text: B; q0 all right
        (mmbench_doc(1, "C", opts), "C. red"),                              # "C." word
        (mmbench_doc(1_000_001, "A", opts), "cat or dog"),                  # two texts, no letter: q1 wrong
        (mmbench_doc(2, "D", ["cat", "dog", "red", "12"]), "A dog is D"),   # two lone letters; text "dog": B, wrong
        (mmbench_doc(3, "B", opts), ""),                                    # nothing read: wrong
        (mmbench_doc(4, "C", opts), "Answer:C"),                            # extractor: ends with a lone C
    ]
    out, _ = scored(tmp_path, "mmbench_en_dev_static", docs, order=[6, 3, 0, 5, 1, 4, 2])
    check(out, {"gpt_eval_score": 2 / 5 * 100}, "gpt_eval_score")  # percent of main questions


def test_ai2d(tmp_path):
    docs = [({"question": "q", "options": ["w", "x", "y", "z"], "answer": str(g)}, a) for g, a in [
        (1, "B"),                   # the letter
        (2, "C. the sun"),          # the filter keeps the leading "C."'s letter
        (3, "(D)"),                 # punctuation ignored: "d"
        (0, "The answer is A"),     # not the letter alone
        (0, ""),
    ]]
    out, _ = scored(tmp_path, "ai2d", docs)
    check(out, {"exact_match": 3 / 5}, "exact_match")


def test_scienceqa_img(tmp_path):
    docs = [({"question": "q", "hint": "", "choices": ["x", "y", "z"], "answer": g}, a) for g, a in [
        (0, "a"),                   # the letter, any case
        (1, "B. y"),                # upper-case letter and a period
        (1, "b. y"),                # lower-case before the period: wrong
        (2, "The answer is C."),    # LLaVA's rule as lmms-eval ports it reads no phrase
        (1, "C"),
    ]]
    out, _ = scored(tmp_path, "scienceqa_img", docs)
    check(out, {"exact_match": 2 / 5}, "exact_match")


def test_mmstar_averages_l2_categories(tmp_path):
    rows = [("coarse perception", "image emotion", "A", "A"),
            ("coarse perception", "image emotion", "B", "(C)"),
            ("coarse perception", "image style & quality", "C", "The answer is C."),
            ("math", "geometry", "D", "Ｄ"),                  # a full-width letter is no letter
            ("math", "geometry", "A", "A")]
    docs = [({"index": i, "question": "q", "category": c, "l2_category": l2, "answer": g}, a)
            for i, (c, l2, g, a) in enumerate(rows)]
    out, _ = scored(tmp_path, "mmstar", docs)
    # per l2: emotion 1/2, style 1, geometry 1/2; categories average their l2s; `average` all three l2s
    check(out, {"coarse perception": (0.5 + 1) / 2, "math": 0.5, "average": (0.5 + 1 + 0.5) / 3}, "average")


def test_realworldqa(tmp_path):
    docs = [({"question": "q", "answer": g}, a) for g, a in [
        ("A", "A."),                # letter gold: the extractor reads A
        ("B", "I think it's C"),    # it reads the final lone C
        ("3", "3."),                # open gold: trailing period dropped
        ("Downhill", "downhill."),
        ("3", "three"),             # no number words
    ]]
    out, _ = scored(tmp_path, "realworldqa", docs)
    check(out, {"exact_match": 3 / 5}, "exact_match")


def test_seedbench(tmp_path):
    docs = [({"question_id": str(i), "question": "q", "data_type": t, "answer": g}, a) for i, (t, g, a) in enumerate([
        ("image", "A", "A"),
        ("image", "B", "B. dog"),   # first character
        ("image", "C", "(C)"),      # first character is "("
        ("video", "D", "d"),        # case ignored
        ("image", "A", ""),
    ])]
    out, _ = scored(tmp_path, "seedbench", docs)
    check(out, {"seed_image": 2 / 4, "seed_video": 1.0, "seed_all": 3 / 5}, "seed_image")


def test_chartqa_relaxed(tmp_path):
    docs = [({"question": "q", "type": t, "answer": g}, a) for t, g, a in [
        ("human_test", "12", "12.5"),        # 0.5 / 12 = 4.2%: right
        ("human_test", "12", "13"),          # 8.3%: wrong
        ("augmented_test", "45%", "44%"),    # 0.44 against 0.45: 2.2%
        ("augmented_test", "Yes", "yes"),    # not numbers: equal ignoring case
        ("augmented_test", "12", "12 kg"),   # a unit makes it text: wrong
        ("augmented_test", "0", "0"),        # target 0 is compared as text
    ]]
    out, _ = scored(tmp_path, "chartqa", docs)
    check(out, {"relaxed_overall": 4 / 6, "relaxed_human_split": 1 / 2, "relaxed_augmented_split": 3 / 4},
          "relaxed_overall")


def test_ocrbench_right_over_1000(tmp_path):
    docs = [({"question": "q", "question_type": t, "dataset": d, "answer": g}, a) for t, d, g, a in [
        ("Regular Text Recognition", "IIIT5K", ["Coffee"], "The word is COFFEE"),   # contained, any case
        ("Doc-oriented VQA", "docVQA", ["Ｔｏｔａｌ"], "total: 5"),                  # full-width folded
        ("Key Information Extraction", "SROIE", ["12.50"], "12.5"),
        ("Handwritten Mathematical Expression Recognition", "HME100k", "x ^ 2", "X^2"),  # case kept
        ("Handwritten Mathematical Expression Recognition", "HME100k", "x ^ 2", "y = x^2"),  # spaces dropped
    ]]
    out, notes = scored(tmp_path, "ocrbench", docs)
    check(out, {"ocrbench_accuracy": 3 / 1000}, "ocrbench_accuracy")
    assert notes.startswith("note: OCRBench divides") and "5" in notes


def test_textvqa(tmp_path):
    docs = [({"question_id": i, "question": "q", "answers": g}, a) for i, (g, a) in enumerate([
        (["coca cola"] * 3 + ["coke"] * 7, "Coca-Cola"),   # "-" becomes a space: 3 of 10 agree
        (["two"] * 10, "2"),                               # number words become digits
        (["yes"] * 10, ""),
    ])]
    out, _ = scored(tmp_path, "textvqa_val", docs)
    check(out, {"exact_match": ((3 * 2 / 3 + 7 * 1) / 10 + 1 + 0) / 3}, "exact_match")


def test_vizwiz_and_okvqa(tmp_path):
    docs = [({"question_id": i, "question": "q", "answers": g}, a) for i, (g, a) in enumerate([
        (["unanswerable"] * 10, "Unanswerable."),          # lower case, final period gone
        ([], "dog"),                                       # no answers: 0
        (["dog"] * 2 + ["cat"] * 8, "a dog"),              # article dropped; 2 of 10 agree
    ])]
    out, _ = scored(tmp_path, "vizwiz_vqa_val", docs)
    check(out, {"exact_match": (1 + 0 + (2 * 1 / 3 + 8 * 2 / 3) / 10) / 3}, "exact_match")
    docs = [({"question_id": i, "question": "q", "answers": g}, a) for i, (g, a) in enumerate([
        (["10"] * 10, "Ten"),
        (["dog"] * 10, "the dog's"),                       # "'s" split off: "dog 's"
    ])]
    out, _ = scored(tmp_path, "ok_vqa_val2014", docs)
    check(out, {"exact_match": 0.5}, "exact_match")


def test_docvqa_anls(tmp_path):
    docs = [({"question": "q", "answers": g}, a) for g, a in [
        (["Total"], "total"),                  # distance 0
        (["12 kg", "twelve"], "12kg"),         # 1 edit over 5 characters: 0.8
        (["dog"], "cat"),                      # 1 - 3/3 = 0
        (["ßß"], "ss"),                        # 2 edits over len("SSSS") = 4 (lengths as upper-cased): 0.5
    ]]
    out, _ = scored(tmp_path, "docvqa_val", docs)
    check(out, {"anls": (1 + 0.8 + 0 + 0.5) / 4}, "anls")


def test_gqa(tmp_path):
    docs = [({"question": "q", "answer": g}, a) for g, a in [
        ("t-shirt", "T-shirt."), ("yes", "Yes"), ("left", "on the left"), ("café", "Café")]]
    out, _ = scored(tmp_path, "gqa", docs)
    check(out, {"exact_match": 3 / 4}, "exact_match")


FIVE = ["cat", "dog", "red", "sun", "sky"]
# lmms-eval seeds Python's global random with 0 and draws for unreadable answers in document order: each gold
# below is that draw, so all three are right only with seed 0 drawn in doc_id order (1 in 125 by chance)
DRAWS = (lambda r: [r.choice("ABCDE") for _ in range(3)])(random.Random(0))


def mc(i, subject, options, gold):
    """A multiple-choice MMMU row: `options` is a Python literal string in lmms-lab's dataset."""
    return {"id": f"validation_{subject}_{i}", "question_type": "multiple-choice", "question": "q",
            "options": str(options), "answer": gold}


def mmmu_docs():
    return [
        (mc(1, "Art", ["cat", "dog", "red"], "B"), "(B) dog"),                        # bracketed letter
        (mc(2, "Art", FIVE, DRAWS[0]), ""),                                            # unreadable: 1st draw
        (mc(3, "Math", ["1", "2", "3", "4"], "C"),
         "I think the answer is 3 because the count is three"),                        # option text "3": C
        (mc(4, "Math", FIVE, DRAWS[1]), "xyz"),                                        # unreadable: 2nd draw
        (mc(5, "Math", ["1", "2", "3", "4"], "D"), "A"),                               # wrong letter
        (mc(6, "Physics", FIVE, DRAWS[2]), "no idea"),                                 # unreadable: 3rd draw
        ({"id": "validation_Math_7", "question_type": "open", "question": "q", "answer": "6.5"},
         "The result is 6.50 kg"),                                                     # official: 6.5 found
    ]


def test_mmmu_random_choice_in_doc_order_and_open_questions(tmp_path):
    out, notes = scored(tmp_path, "mmmu_val", mmmu_docs(), order=[4, 2, 6, 0, 3, 5, 1])  # lines out of order
    # Art 2/2, Math 2/4 (3/4 with the open one), Physics 1/1; subjects weighted by size, 5 decimals
    check(out, {"mmmu_acc": round(6 / 7, 5), "mmmu_acc_lmms_eval": round(5 / 7, 5)}, "mmmu_acc")
    assert "1 open question(s)" in notes and "scores every open answer wrong" in notes


def test_api_equals_the_command(tmp_path):
    result = mmmerge.score("mmmu_val", [{"doc_id": i, "doc": d, "filtered_resps": [a]}
                                        for i, (d, a) in enumerate(mmmu_docs())])
    out, _ = scored(tmp_path, "mmmu_val", mmmu_docs())
    assert result.summary() == out and result.documents == 7 and result.unit == "fraction"


def test_table_output(tmp_path):
    doc = {"question_id": "1", "data_type": "image", "answer": "A"}
    r = run("score", "--task", "seedbench", write_log(tmp_path / "s.jsonl", [(doc, "A")]))
    assert r.returncode == 0 and "seedbench: 1 documents" in r.stdout and "seed_image" in r.stdout
    assert "<- headline" in r.stdout.splitlines()[1]


def test_refusals(tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps({"doc_id": 0, "doc": {"answer": "yes"}, "filtered_resps": ["yes"]}) + "\n"
                    + json.dumps({"doc_id": 1, "target": "yes", "filtered_resps": "yes"}) + "\n")  # lmms-eval 0.4
    one_line_error(run("score", "--task", "pope", path), f"{path}: line 2", "no `doc`", "0.4")
    path.write_text(json.dumps({"doc_id": 0, "doc": {}, "filtered_resps": ["yes"]}) + "\n\n{oops\n")
    one_line_error(run("score", "--task", "pope", path), f"{path}: line 3", "not valid JSON")
    path.write_text(json.dumps({"doc_id": 0, "doc": {"answer": "yes"}, "filtered_resps": ["yes"]}) + "\n")
    one_line_error(run("score", "--task", "mme", path), "line 1", "`category`")  # a POPE log scored as MME
    path.write_text(json.dumps({"doc_id": 0, "doc": {"answer": "yes"}}) + "\n")
    one_line_error(run("score", "--task", "pope", path), "line 1", "filtered_resps")
    one_line_error(run("score", "--task", "pope", tmp_path / "missing.jsonl"), "missing.jsonl")
    path.write_bytes(b"\xff\xfe{}")
    one_line_error(run("score", "--task", "pope", path), str(path), "not UTF-8")
    with pytest.raises(mmmerge.eval.EvalDataError, match="not one mmmerge scores"):
        mmmerge.score("mmbench_cn_dev", path)


def test_score_runs_after_every_lmms_submodule_is_imported(tmp_path):
    """Importing a submodule sets it as an attribute of its package: none may be named as a lazy export of
    mmmerge.eval.lmms (once `mmmerge.eval.lmms.score` was a module, and the command then called a module)."""
    import importlib
    import pkgutil

    import mmmerge.eval.lmms as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    test_pope(tmp_path)  # the command, scored against the hand-worked values
    assert callable(mmmerge.score) and callable(package.score)
