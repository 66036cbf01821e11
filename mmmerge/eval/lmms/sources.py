"""Where each lmms-eval task's documents come from and how its prompt is built, as data (lmms-eval commit 75571cf,
lmms_eval/tasks/<task>/*.yaml): dataset, config (`dataset_name`), split (`test_split`), the image column, the
prompt builder and post-prompt of the default `lmms_eval_specific_kwargs`, generation limits, and the field the
score is broken down by. The scorer, headline and unit are the task's row in `table.LMMS_TASKS`.

The dataset IDs are lmms-eval's `dataset_path`s at that commit, read when no `--data` is given; any folder or
cached ID in the same layout (lmms-lab/MME, ...) is read as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import prompts

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT

# mmmu_doc_to_visual: the image_N columns that the prompt's "<image N>" placeholders name, in sorted order
MMMU_PLACEHOLDERS = "<image N>"


@dataclass(frozen=True)
class LmmsSource:
    dataset: str  # dataset_path
    split: str  # test_split
    prompt: Callable[[dict, str], str]  # doc_to_text with the default kwargs: (row, post_prompt) -> text
    post: str = ""  # the default post_prompt (pre_prompt is "" for every task here)
    config: str | None = None  # dataset_name: the folder of the config's shards
    image: str = "image"  # the image column ({"bytes", "path"}, or a list of them); MMMU_PLACEHOLDERS for MMMU
    max_new_tokens: int = 1024  # generation_kwargs; lmms-eval's default when the YAML gives none
    until: tuple = ()  # generation_kwargs `until` besides the end of sequence
    breakdown: str | None = None  # the row's field (or `subject` for MMMU) scores are broken down by
    question_id: str | None = None  # the dataset's question id column, which a dev/test split keeps together


LMMS_SOURCES = {
    "mme": LmmsSource("lmms-lab-encoder/MME", "test", prompts.without_yes_no, SHORT, max_new_tokens=16,
                      breakdown="category", question_id="question_id"),  # a pair of questions shares one
    "pope": LmmsSource("lmms-lab-encoder/POPE", "test", prompts.stripped, SHORT, max_new_tokens=128,
                       question_id="question_id"),
    "mmbench_en_dev_static": LmmsSource("lmms-lab-encoder/MMBench", "dev", prompts.mmbench, LETTER, config="en",
                                        until=("ASSISTANT:",), question_id="index"),  # copies: index mod 1e6
    "mmmu_val": LmmsSource("lmms-lab-encoder/MMMU", "validation", prompts.mmmu, LETTER.strip(), image=MMMU_PLACEHOLDERS,
                           max_new_tokens=128, breakdown="subject", question_id="id"),
    "seedbench": LmmsSource("lmms-lab-encoder/SEED-Bench", "test", prompts.seedbench, LETTER, until=("ASSISTANT:",),
                            breakdown="question_type_id", question_id="question_id"),
    "chartqa": LmmsSource("lmms-lab-encoder/ChartQA", "test", prompts.question,
                          "\nAnswer the question with a single word.", max_new_tokens=16),
    "ocrbench": LmmsSource("echo840/OCRBench", "test", prompts.stripped, max_new_tokens=128),
    "vizwiz_vqa_val": LmmsSource("lmms-lab-encoder/VizWiz-VQA", "val", prompts.capitalized, UNANSWERABLE,
                                 until=("ASSISTANT:",), question_id="question_id"),
    "ok_vqa_val2014": LmmsSource("lmms-lab-encoder/OK-VQA", "val2014", prompts.question, UNANSWERABLE,
                                 until=("ASSISTANT:",), question_id="question_id"),
    "textvqa_val": LmmsSource("lmms-lab-encoder/textvqa", "validation", prompts.capitalized, SHORT,
                              until=("ASSISTANT:",), question_id="question_id"),
    "docvqa_val": LmmsSource("lmms-lab-encoder/DocVQA", "validation", prompts.question, SHORT, config="DocVQA",
                             max_new_tokens=32, question_id="questionId"),
    "ai2d": LmmsSource("lmms-lab-encoder/ai2d", "test", prompts.listed_options, LETTER, max_new_tokens=16),
    "scienceqa_img": LmmsSource("lmms-lab-encoder/ScienceQA", "test", prompts.scienceqa, LETTER,
                                config="ScienceQA-IMG", max_new_tokens=16),
    # GQA's questions and images are two configs joined by imageId (gqa/utils.py gqa_process_docs).
    "gqa": LmmsSource("lmms-lab-encoder/GQA", "testdev", prompts.question, SHORT,
                      config="testdev_balanced_instructions", max_new_tokens=16, question_id="id"),
    "mmstar": LmmsSource("Lin-Chen/MMStar", "val", prompts.without_yes_no,
                         "\nAnswer with the option's letter from the given choices directly", breakdown="category",
                         question_id="index"),
    "realworldqa": LmmsSource("lmms-lab-encoder/RealWorldQA", "test", prompts.stripped, max_new_tokens=16),
}

GQA_IMAGES = ("testdev_balanced_images", "testdev", "id")  # config, split, key column matched to `imageId`
