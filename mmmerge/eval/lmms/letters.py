"""How lmms-eval reads an option letter out of a free answer: three rule sets, each ported from its source.

- `mcq_letter`: lmms_eval/tasks/_task_utils/mcq_extract.py `extract_mcq_answer` (MMStar, RealWorldQA, and
  MMBench's static fallback): every format a letter can appear in is a candidate; the highest-priority format
  wins, then the latest position.
- `mmbench_option`: MMBench_Evaluator.can_infer (mmbench_evals.py): a lone letter among A-E, or a letter with
  one punctuation pattern, else exactly one option text inside the answer.
- `mmmu_letter`: mmmu_mcq_utils.parse_mmmu_multi_choice_response (the official MMMU rule with lmms-eval's
  changes): bracketed letters, then letters before a space or a period, then option texts in long answers;
  nothing found takes `rng.choice` over the options.
"""

from __future__ import annotations

import random

DEFAULT_LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")
_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
            "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
            "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
            "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
             "space": 2, "fallback": 0}


def mcq_letter(response: str, choices=None) -> str:
    """The letter `extract_mcq_answer` reads, "" when none. An empty `choices` means A-H, as there."""
    if not response or not response.strip():
        return ""
    letters = list(choices or DEFAULT_LETTERS)
    text = response.strip()
    for mark in (",", ".", "!", "?", ";", ":", "'", '"'):
        text = text.strip(mark)
    text = f" {text} "
    found = []  # (letter, position, format) in the order the source appends them
    for fmt, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                         ("space", "{} ")):
        found += [(c, text.rfind(pattern.format(c)), fmt) for c in letters if pattern.format(c) in text]
    lower = text.lower()
    for phrase in _PHRASES:
        at = lower.find(phrase)
        if at != -1:
            for c in letters:
                pos = text.find(c, at + len(phrase))
                if pos != -1:
                    found.append((c, pos, "phrase"))
    stripped = text.strip()
    found += [(c, 0, "start") for c in letters
              if stripped.startswith(c) and (len(stripped) == 1 or not stripped[1].isalpha())]
    found += [(c, len(text) - 1, "end") for c in letters
              if stripped.endswith(c) and (len(stripped) == 1 or not stripped[-2].isalpha())]
    if not found:
        found = [(c, text.rfind(c), "fallback") for c in letters if c in text]
    if not found:
        return ""
    found.sort(key=lambda f: (_PRIORITY[f[2]], f[1]), reverse=True)  # stable: ties keep the first appended
    return found[0][0]


_MMBENCH_WRAPS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                  (":", ","), (":", "."), (":", ")"), (":", ")."))


def mmbench_letter(answer: str):
    """can_infer_option: the letter among A-E standing alone as a word when exactly one does (unless "A" is
    one of more than three words: a quantifier), else the one letter in one wrapping ("B.", "(C)", ":D" ...);
    None when neither."""
    if "Failed to obtain answer via API" in answer:
        return None
    letters = "ABCDE"
    words = [w.strip() for w in answer.split()]
    if sum(c in words for c in letters) == 1 and not ("A" in words and len(words) > 3):
        return next(c for c in letters if c in words)
    for before, after in _MMBENCH_WRAPS:
        if sum(before + c + after in words for c in letters) == 1:
            return next(c for c in letters if before + c + after in words)
    return None


def mmbench_option(answer: str, options: dict):
    """can_infer: the letter rule, else the one option (A-D, text lower-cased) whose text is in the answer."""
    letter = mmbench_letter(answer)
    if letter:
        return letter
    low = answer.lower()
    hits = [k for k, text in options.items() if str(text).lower() in low]
    return hits[0] if len(hits) == 1 else None


def mmmu_letter(response: str, options: list[str], rng: random.Random) -> str:
    """The option letter lmms-eval's MMMU parser reads; when it reads none, `rng.choice` over the letters."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    text_of = dict(zip(letters, options))
    for mark in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(mark)
    response = f" {response} "
    by_letter, bracketed = True, False
    found = [c for c in letters if f"({c})" in response]
    bracketed = bool(found)
    if not found:
        found = [c for c in letters if f"{c} " in response]
    if not found:
        found = [c for c in letters if f"{c}." in response]
    if not found and len(response.split()) > 5:
        found = [c for c, t in text_of.items() if t.lower() in response.lower()]
        by_letter = not found
    if not found:
        return rng.choice(letters)
    if len(found) == 1:
        return found[0]
    if not by_letter:
        where = [response.lower().rfind(text_of[c].lower()) for c in found]
    elif bracketed:
        where = [response.rfind(f"({c})") for c in found]
    else:
        where = [response.rfind(f" {c} ") for c in found]
    return found[where.index(max(where))]  # numpy's argmax: the first largest
