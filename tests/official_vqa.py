"""The official VQA metric scripts transcribed, line by line, as oracles: GT-Vision-Lab/VQA vqaEval.py (2021, run by
Python 2: ASCII `\\d`, `round` half away from zero, the period regex called with `re.UNICODE` as its count) and
MMF/LLaVA's m4c_evaluator.py (Python 3). They keep the scripts' own structure (answer dicts, leave-one-out by dict
inequality) so that they share no code or shortcuts with mmmerge.eval.metrics."""

import re
from fractions import Fraction

# ---------------------------------------------------------------------------------------------- VQA oracle
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}

MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
              "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ["a", "an", "the"]
PERIOD_STRIP = re.compile(r"(?!<=[0-9])(\.)(?![0-9])")  # Python 2 without re.UNICODE: \d is [0-9]
COMMA_STRIP = re.compile(r"([0-9])(\,)([0-9])")
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def process_punctuation(in_text):
    out_text = in_text
    for p in PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(COMMA_STRIP, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return PERIOD_STRIP.sub("", out_text, 32)  # periodStrip.sub("", outText, re.UNICODE): count = 32


def process_digit_article(in_text):
    out_text = []
    for word in in_text.lower().split():
        word = MANUAL_MAP.setdefault(word, word)
        if word not in ARTICLES:
            out_text.append(word)
    for word_id, word in enumerate(out_text):
        if word in CONTRACTIONS:
            out_text[word_id] = CONTRACTIONS[word]
    return " ".join(out_text)


def official_question_accuracy(res_ans, gt_answers):
    """VQAEval.evaluate's body for one question (answers as dicts with answer_id, as in the annotation file)."""
    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(gt_answers)]
    for ans_dic in answers:
        ans_dic["answer"] = ans_dic["answer"].replace("\n", " ").replace("\t", " ").strip()
    res_ans = res_ans.replace("\n", " ").replace("\t", " ").strip()
    gt_acc = []
    if len(set(a["answer"] for a in answers)) > 1:
        for ans_dic in answers:
            ans_dic["answer"] = process_digit_article(process_punctuation(ans_dic["answer"]))
        res_ans = process_digit_article(process_punctuation(res_ans))
    for gt_ans_datum in answers:
        other = [item for item in answers if item != gt_ans_datum]
        matching = [item for item in other if item["answer"] == res_ans]
        gt_acc.append(min(1, float(len(matching)) / 3))
    return float(sum(gt_acc)) / len(gt_acc)


def py2_round(x, n=2):
    """Python 2.7's round(): the exact binary value, halves away from zero."""
    q = Fraction(x) * 10 ** n
    k = int(q + Fraction(1, 2)) if q >= 0 else -int(-q + Fraction(1, 2))
    return float(Fraction(k, 10 ** n))


def official_report(preds, gts, ans_types, ques_types):
    acc_qa, acc_q, acc_a = [], {}, {}
    for p, g, a, q in zip(preds, gts, ans_types, ques_types):
        acc = official_question_accuracy(p, g)
        acc_qa.append(acc)
        acc_q.setdefault(q, []).append(acc)
        acc_a.setdefault(a, []).append(acc)
    pct = lambda v: py2_round(100 * float(sum(v)) / len(v), 2)  # noqa: E731
    return {"overall": pct(acc_qa), "perQuestionType": {k: pct(v) for k, v in acc_q.items()},
            "perAnswerType": {k: pct(v) for k, v in acc_a.items()}}


# ---------------------------------------------------------------------------------------------- EvalAI (m4c) oracle
M4C_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
M4C_COMMA = re.compile(r"(?<=\d)(\,)+(?=\d)")


def m4c_process(item):
    item = item.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    item = item.replace("\n", " ").replace("\t", " ").strip()
    out_text = item
    for p in PUNCT:
        if (p + " " in item or " " + p in item) or (re.search(M4C_COMMA, item) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    out_text = M4C_PERIOD.sub("", out_text, 32)
    return process_digit_article(out_text)


def m4c_textvqa(pred, raw_answers):
    answers = [m4c_process(a) for a in raw_answers]
    gt_answers = list(enumerate(answers))
    scores = {}
    for unique in set(answers):
        accs = []
        for gt in gt_answers:
            other = [item for item in gt_answers if item != gt]
            accs.append(min(1, float(len([item for item in other if item[1] == unique])) / 3))
        scores[unique] = sum(accs) / len(accs)
    return scores.get(m4c_process(pred), 0.0)
