"""Prompts as lmms-eval's `doc_to_text` builds them with each task's default `lmms_eval_specific_kwargs`
(lmms-eval commit 75571cf, lmms_eval/tasks/<task>/utils.py): the question, its options as the task lists them,
and the task's post-prompt, quirks included (MMBench's doubled newline, MMStar's missing period, TextVQA's and
VizWiz's `str.capitalize`, which also lower-cases the rest of the question).

Each builder takes the dataset row and the post-prompt the task table gives it.
"""

from __future__ import annotations

import ast
import math

YES_NO = " Please answer yes or no."  # mme/utils.py and mmstar/utils.py `replace_prompt`


def _letters(options) -> str:
    """"A. first\\nB. second ...": ai2d, scienceqa and mmmu list their options so."""
    return "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))


def question(doc, post: str) -> str:
    """chartqa, ok_vqa, docvqa, gqa: f"{pre_prompt}{question}{post_prompt}"."""
    return f"{doc['question']}{post}"


def stripped(doc, post: str) -> str:
    """pope, ocrbench, realworldqa: the question stripped (realworldqa's replacement needs a post-prompt, and
    its default has none)."""
    return f"{doc['question'].strip()}{post}"


def capitalized(doc, post: str) -> str:
    """textvqa, vizwiz_vqa: `question.capitalize()` (textvqa's OCR tokens are off by default)."""
    return f"{doc['question'].capitalize()}{post}"


def without_yes_no(doc, post: str) -> str:
    """mme, mmstar: stripped; with a post-prompt, " Please answer yes or no." is removed first."""
    text = doc["question"].strip()
    return f"{text.replace(YES_NO, '')}{post}" if post else text


def listed_options(doc, post: str) -> str:
    """ai2d (prompt_format mcq): the question, then its `options` lettered."""
    return f"{doc['question']}\n{_letters(doc['options'])}{post}"


def scienceqa(doc, post: str) -> str:
    """sqa_doc_to_text (format default): "Context: hint" when the hint is non-empty, question, lettered choices.
    A hint of None is not replaced and prints as "None", as the source's f-string prints it."""
    context = doc["hint"]
    if context:
        context = f"Context: {context}\n"
    return f"{context}{doc['question']}\n{_letters(doc['choices'])}{post}"


def seedbench(doc, post: str) -> str:
    """seed_doc_to_text: four choices from choice_a..choice_d, then its fixed instruction (`post`)."""
    text = doc["question"] + "\n" + f"A. {doc['choice_a']}\n" + f"B. {doc['choice_b']}\n"
    text += f"C. {doc['choice_c']}\n" + f"D. {doc['choice_d']}"
    return f"{text}{post}"


def _present(value) -> bool:
    """pd.notna(value) and value != "nan", on one cell."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value != "nan"


def mmbench(doc, post: str) -> str:
    """mmbench_doc_to_text with create_options_prompt: "There are several options:" and "X. text" for each of
    A-E present and truthy; the hint first when present; then "\\n" + the post-prompt (which starts with its own
    newline)."""
    options = {c: doc[c] for c in "ABCDE" if c in doc and doc[c]}
    listed = "There are several options:\n" + "".join(f"{k}. {v}\n" for k, v in sorted(options.items())
                                                     if _present(v))
    listed = listed.rstrip("\n")
    hint = doc["hint"]
    text = f"{hint} {doc['question']} {listed}" if _present(hint) else f"{doc['question']} {listed}"
    return f"{text}\n{post}"


MMMU_OPEN = "Answer the question using a single word or phrase."


def mmmu(doc, post: str) -> str:
    """construct_prompt: multiple choice lists the options (a Python literal in the row) and ends with `post`;
    an open question ends with the open-ended prompt. Image placeholders ("<image 1>") stay in the text
    (interleaved_format is false)."""
    if doc["question_type"] == "multiple-choice":
        return f"{doc['question']}\n{_letters(ast.literal_eval(doc['options']))}\n\n{post}"
    return f"{doc['question']}\n\n{MMMU_OPEN}"
