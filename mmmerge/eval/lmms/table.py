"""The lmms-eval tasks `mmmerge score` knows, as data: scorer, headline metric, unit, and what decides it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import choices, mmbench, mmmu, open_answers, yes_no


@dataclass(frozen=True)
class LmmsTask:
    scorer: Callable  # (entries, notes) -> {metric: value}; may append notes (one line each)
    headline: str
    unit: str  # "fraction" (0-1), "percent" (0-100), "points" (MME: 0-2000 perception)
    decides: str


LMMS_TASKS = {
    "pope": LmmsTask(yes_no.pope, "pope_f1_score", "fraction",
                     "answer lower-cased equals yes/no exactly; yes_ratio is the gold's"),
    "mme": LmmsTask(yes_no.mme, "mme_perception_score", "points",
                    "yes/no in the first 4 characters; Σ over subtasks of acc + acc+ (pairs by question_id)"),
    "mmbench_en_dev_static": LmmsTask(mmbench.mmbench_en_dev_static, "gpt_eval_score", "percent",
                                      "letter or option text by rule; a question counts when all circular copies do"),
    "ai2d": LmmsTask(choices.ai2d, "exact_match", "fraction",
                     "leading \"X.\" kept as X; equals the letter ignoring case and punctuation"),
    "scienceqa_img": LmmsTask(choices.scienceqa_img, "exact_match", "fraction",
                              "the letter, or an upper-case letter and a period first"),
    "mmstar": LmmsTask(choices.mmstar, "average", "fraction",
                       "letter by lmms-eval's MCQ extractor; mean of per-l2-category accuracies"),
    "realworldqa": LmmsTask(choices.realworldqa, "exact_match", "fraction",
                            "letter by the MCQ extractor; open golds: equal ignoring case and final periods"),
    "seedbench": LmmsTask(choices.seedbench, "seed_image", "fraction", "the answer's first character is the letter"),
    "chartqa": LmmsTask(open_answers.chartqa, "relaxed_overall", "fraction",
                        "numbers within 5% (a % sign divides by 100); else equal ignoring case"),
    "ocrbench": LmmsTask(open_answers.ocrbench, "ocrbench_accuracy", "fraction",
                         "a gold answer inside the answer; right / 1000"),
    "textvqa_val": LmmsTask(open_answers.textvqa_val, "exact_match", "fraction",
                            "VQA accuracy after EvalAI's answer processing"),
    "vizwiz_vqa_val": LmmsTask(open_answers.vizwiz_vqa_val, "exact_match", "fraction",
                               "VQA accuracy after EvalAI's answer processing"),
    "ok_vqa_val2014": LmmsTask(open_answers.ok_vqa_val2014, "exact_match", "fraction",
                               "VQA accuracy after EvalAI's answer processing"),
    "docvqa_val": LmmsTask(open_answers.docvqa_val, "anls", "fraction",
                           "ANLS: 1 - normalised edit distance to the nearest gold, 0 below 0.5"),
    "gqa": LmmsTask(open_answers.gqa, "exact_match", "fraction", "equal ignoring case and ASCII punctuation"),
    "mmmu_val": LmmsTask(mmmu.mmmu_val, "mmmu_acc", "fraction",
                         "MMMU's letter parse, else random.choice seeded 0; open: official MMMU; 5 decimals"),
}
