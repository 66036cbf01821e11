"""What a candidate scores: the tasks' own score on the dev split, or a label-free criterion. Each objective is
one function `(Candidate) -> float` registered by the name a spec gives it (`search.objective`), maximised.

- `score`: the mean of each task's headline metric (VQAv2's `overall`, ...) on its dev questions, computed as
  `mmmerge eval` computes it, in percent (an lmms-eval task's fraction times 100).
- `agreement` (AdaMMS, Du et al. 2025): the share of dev questions a candidate answers the same as its
  neighbour, a candidate a small step away in every searched range. Merges whose answers hold still under
  small changes of the coefficients are the good ones; no answer key is needed.
- `entropy` (AdaMerging, Yang et al. 2024): the mean entropy of the next-token distribution at the first
  answer token, over the dev questions; less is better (reported negated, so every objective is maximised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from ..eval.generate import Generator, build_prompt, exact_float32
from ..eval.runner import open_sample_image, answer_samples, fill_prompt
from .registry import Registry
from .space import Dimension, neighbour

if TYPE_CHECKING:  # spec.py asks this module's registry for the objective's name
    from .spec import SearchSettings, Split

OBJECTIVES = Registry("objective")


class Scorer:
    """Scores the model in memory on the splits of a search (prompts built once)."""

    def __init__(self, model, processor, splits: list[Split], *, batch_size: int, max_new_tokens: int):
        self.model, self.processor, self.splits = model, processor, splits
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.prompts = {id(s): ([build_prompt(processor, fill_prompt(s.prompt, q.question)) for q in s.dev],
                                [build_prompt(processor, fill_prompt(s.prompt, q.question)) for q in s.test])
                        for s in splits}

    def answers(self, split: Split, part: str = "dev") -> list[str]:
        """The processed answers to one split's dev (or test) questions, in question order."""
        samples = split.dev if part == "dev" else split.test
        prompts = self.prompts[id(split)][0 if part == "dev" else 1]
        source = split.source if part == "dev" else split.test_source
        raw = answer_samples(self.model, self.processor, split.task, samples, prompts, batch_size=self.batch_size,
                             max_new_tokens=self.max_new_tokens, source=source, name="candidate")
        return [split.task.answer(raw[i]) for i in range(len(samples))]

    def metrics(self, split: Split, part: str = "dev", answers: list[str] | None = None) -> dict:
        samples = split.dev if part == "dev" else split.test
        answers = answers if answers is not None else self.answers(split, part)
        scores = split.task.score_all(samples, answers)
        return split.task.metrics(samples, answers, scores)

    def task_scores(self, part: str = "dev") -> dict[str, float]:
        """Each task's headline score on its dev (or test) questions."""
        out = {}
        for split in self.splits:
            if part == "test" and not split.test:
                continue
            out[split.task.name] = float(self.metrics(split, part)[split.task.headline])
        return out

    def all_answers(self) -> dict[str, list[str]]:
        return {s.task.name: self.answers(s) for s in self.splits}

    @torch.inference_mode()
    def entropy(self) -> float:
        """Mean entropy (nats) of the first answer token's distribution over every dev question."""
        total, count = 0.0, 0
        gen = Generator(self.model, self.processor, name="candidate")
        with exact_float32():
            for split in self.splits:
                prompts = self.prompts[id(split)][0]
                for i in range(0, len(prompts), self.batch_size):
                    batch = list(range(i, min(i + self.batch_size, len(prompts))))
                    ims = [open_sample_image(split.dev[j].image, split.source, split.dev[j].question_id) for j in batch]
                    enc = gen.encode([prompts[j] for j in batch], ims).to(self.model.device)
                    if "pixel_values" in enc:
                        enc["pixel_values"] = enc["pixel_values"].to(torch.float32)
                    logits = self.model(**enc).logits[:, -1].float()  # left padding: the last position is the prompt's end
                    logp = torch.log_softmax(logits, -1)
                    total += float(-(logp.exp() * logp).sum(-1).sum())
                    count += len(batch)
        return total / count


def mean_percent(splits: list[Split], scores: dict[str, float]) -> float:
    """The `score` objective: the mean of the tasks' headlines, each in percent of its full scale (mmmerge's
    tasks report percent, lmms-eval's fractions or MME's points out of 2000), so no task outweighs another by its
    unit."""
    scale = {s.task.name: getattr(s.task, "full_scale", 100.0) for s in splits}
    return sum(v * (100.0 / scale[task]) for task, v in scores.items()) / len(scores)


def agreement(first: dict[str, list[str]], second: dict[str, list[str]]) -> float:
    """Percent of questions (all tasks together) answered the same by two candidates."""
    same = sum(a == b for task in first for a, b in zip(first[task], second[task]))
    return 100.0 * same / sum(len(v) for v in first.values())


@dataclass
class Candidate:
    """What an objective scores: the candidate merged in memory (scored through `scorer`), its searched values,
    `record(key, value)` to keep a number in its trial, and `load(values)` to merge another candidate in place."""

    values: dict
    dimensions: list[Dimension]
    settings: SearchSettings
    scorer: Scorer
    record: Callable[[str, float], None]
    load: Callable[[dict], None]


@OBJECTIVES.register("score")
def mean_task_score(c: Candidate) -> float:
    scores = c.scorer.task_scores("dev")
    for task, v in scores.items():
        c.record(f"dev_{task}", v)
    return mean_percent(c.scorer.splits, scores)


@OBJECTIVES.register("entropy")
def low_entropy(c: Candidate) -> float:
    value = c.scorer.entropy()
    c.record("entropy", value)
    return -value


@OBJECTIVES.register("agreement")
def neighbour_agreement(c: Candidate) -> float:
    first = c.scorer.all_answers()
    c.load(neighbour(c.values, c.dimensions, c.settings.agreement_step))
    return agreement(first, c.scorer.all_answers())
