"""`evaluate`: read a task, answer every question with batched greedy generation, score, write OUT.

Everything that can be wrong with the input (files, fields, images, the model folder) is found before the
first file is written, so a failed run leaves OUT as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..device import resolve_device
from ..errors import UnreadableFileError
from ..io import atomic_output_dir, writes_output
from ..io.atomic import atomic_write_text
from ..images import DEFAULT_MAX_PIXELS, image_size, open_rgb
from ..model_card import record_eval
from . import distributed as D
from .generate import Generator, build_prompt, load_model, prompt_lengths
from .lmms.write import write_lmms_log
from .tasks import EvalDataError, EvalTask, get_task, read_task


def sample_images(sample) -> list:
    """A sample's image, or its images (a document that shows several, in order)."""
    return list(sample.image) if isinstance(sample.image, tuple) else [sample.image]


def images_label(sample) -> str:
    """Where a sample's image(s) come from, for samples.jsonl: the path, or the images' places joined by "; "."""
    return "; ".join(str(image) for image in sample_images(sample))


def open_sample_image(path: Path, source, qid) -> Image.Image:
    try:
        return open_rgb(path, max_pixels=None)  # its size passed the limit before the model loaded
    except UnreadableFileError as e:
        raise EvalDataError(f"{source}: question {qid}: {e}") from e


def check_image_headers(samples, source, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Read every image header once (cheap), so a broken or oversized file stops the run before the model loads."""
    seen = set()
    for s in samples:
        for image in sample_images(s):
            if image not in seen:
                seen.add(image)
                try:
                    image_size(image, max_pixels=max_pixels)
                except UnreadableFileError as e:
                    raise EvalDataError(f"{source}: question {s.question_id}: {e}") from e


INTERNAL_INFO = ("order", "where")  # Sample.info keys that are bookkeeping, not fields to break scores down by


class RunningScore:
    """The mean per-question score (in %) of the answers so far, for the progress bar; none without targets."""

    def __init__(self, task: EvalTask):
        self.task, self.total, self.count = task, 0.0, 0

    def add(self, samples, raws) -> bool:
        for s, r in zip(samples, raws):
            sc = self.task.score(self.task.answer(r), s)
            if sc is not None:
                self.total, self.count = self.total + sc, self.count + 1
        return self.count > 0

    def text(self) -> str:
        return f"score {100 * self.total / self.count:.1f}% of {self.count}"


def fill_prompt(template: str, question: str) -> str:
    return template.replace("{question}", question)


@writes_output(inputs=("model",), data=("questions", "annotations", "images", "data"))
def evaluate(model, task, *, questions=None, annotations=None, images=None, data=None, out, batch_size=8,
             limit=None, device=None, max_new_tokens=None, prompt=None, progress=True, force=False,
             max_image_pixels=DEFAULT_MAX_PIXELS) -> dict:
    """Evaluate an image-text-to-text checkpoint folder `model` (LLaVA, LLaVA-NeXT, Qwen2-VL, Gemma 3, PaliGemma,
    Idefics3/SmolVLM, mllama, ...: each through its own processor and chat template) on `task` ("vqav2",
    "textvqa", "gqa", "pope", "scienceqa", "jsonl", or an lmms-eval task such as "mme", "mmmu_val"); write
    OUT/predictions.json, metrics.json, samples.jsonl (and run.json, for eval-compare; for lmms-eval's tasks and
    mmmerge's tasks that lmms-eval names, its sample log and results JSON too: lmms_samples_<task>.jsonl,
    lmms_results.json) and return the metrics. `data` is another name for the task's main file (`questions`); for
    an lmms-eval task, the dataset folder (parquet shards as huggingface_hub downloads lmms-lab's repositories), a
    dataset ID in the local Hugging Face cache (default: the ID lmms-eval reads) or a JSONL of its documents. `max_new_tokens`: default the task's (lmms-eval's for its
    tasks).
    `prompt` replaces the task's template; it must contain "{question}". Under torchrun the questions are
    sharded over the ranks and rank 0 writes the files; every rank returns the metrics.
    `force`: replace a previous mmmerge output in OUT. `max_image_pixels`: larger images are refused before
    they are decoded (None: no limit)."""
    if questions is not None and data is not None:
        raise EvalDataError("give the task's file as `questions` or as `data`, not both")
    questions = questions if questions is not None else data
    t = get_task(task, questions) if isinstance(task, str) else task
    if not isinstance(t, EvalTask):
        raise EvalDataError(f"task must be a name or an EvalTask, not {type(task).__name__}")
    questions = questions if questions is not None else t.default_data
    max_new_tokens = t.max_new_tokens if max_new_tokens is None else max_new_tokens
    template = prompt if prompt is not None else t.prompt
    if "{question}" not in template:
        raise EvalDataError(f"prompt {template!r} has no {{question}} placeholder")
    if batch_size < 1 or max_new_tokens < 1 or (limit is not None and limit < 1):
        raise EvalDataError("batch_size, max_new_tokens and limit must be at least 1")
    out = Path(out)
    if device is not None:
        resolve_device(device)

    samples = read_task(t, questions, annotations, images, limit)
    check_image_headers(samples, questions, max_image_pixels)
    ranks = D.setup(device)
    try:
        model_obj, processor = load_model(model, ranks.device, progress=False)  # our own bar says enough
        prompts = [build_prompt(processor, fill_prompt(template, s.question), len(sample_images(s))) for s in samples]
        raw = answer_samples(model_obj, processor, t, samples, prompts, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, source=questions, name=model, share=(ranks.rank, ranks.world),
                             progress=progress and ranks.main)
        shards = D.gather(raw, ranks)
        metrics = None
        if ranks.main:
            for shard in shards:
                raw.update(shard)
            with atomic_output_dir(out, force) as tmp:
                metrics = _score_and_write(t, samples, prompts, [raw[i] for i in range(len(samples))], tmp,
                                           dict(model=str(model), task=t.name, questions=len(samples),
                                                questions_file=str(questions),
                                                batch_size=batch_size, max_new_tokens=max_new_tokens,
                                                prompt=template, world_size=ranks.world, headline=t.headline,
                                                breakdown=t.breakdown))
        return D.broadcast(metrics, ranks)
    finally:
        D.teardown(ranks)


def answer_samples(model, processor, task: EvalTask, samples, prompts: list[str], *, batch_size: int, max_new_tokens: int,
                   source, name, share: tuple[int, int] = (0, 1), progress: bool = False) -> dict[int, str]:
    """Raw answers of a loaded model (sample index -> text) to this process's share (rank, world) of the
    samples: the runner's loop, also used on models merged in memory (search)."""
    # Longest first, so a batch holds prompts of similar length (little padding); ranks take every
    # world-th one, so their shares are alike.
    # (Counted as the prompts are encoded: a BOS the chat template wrote is not added again.)
    lengths = prompt_lengths(processor, prompts)
    rank, world = share
    order = sorted(range(len(samples)), key=lambda i: -lengths[i])[rank::world]
    gen = Generator(model, processor, max_new_tokens=max_new_tokens, name=name,
                    stop_strings=task.stop_strings)
    raw = {}
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    score = RunningScore(task)
    bar = tqdm(batches, desc=f"eval {task.name}", unit="batch", disable=not progress)
    for batch in bar:
        ims = [[open_sample_image(image, source, samples[i].question_id) for image in sample_images(samples[i])]
               for i in batch]
        answers = gen([prompts[i] for i in batch], ims)
        raw.update(zip(batch, answers))
        if score.add([samples[i] for i in batch], answers):
            bar.set_postfix_str(score.text(), refresh=False)
    return raw


def _score_and_write(task: EvalTask, samples, prompts, raws, out: Path, run: dict) -> dict:
    answers = [task.answer(r) for r in raws]
    scores = task.score_all(samples, answers)
    metrics = task.metrics(samples, answers, scores)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "predictions.json", json.dumps([{"question_id": s.question_id, "answer": a}
                                                 for s, a in zip(samples, answers)]))
    atomic_write_text(out / "samples.jsonl", "".join(
        json.dumps({"question_id": s.question_id, "image": images_label(s), "question": s.question, "prompt": p,
                    "raw": r, "answer": a, "score": sc, "target": s.target,
                    **{k: v for k, v in s.info.items() if k not in INTERNAL_INFO}}) + "\n"
        for s, p, r, a, sc in zip(samples, prompts, raws, answers, scores)))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write_text(out / "run.json", json.dumps(run, indent=2))
    write_lmms_log(task, samples, prompts, raws, answers, scores, out, run)  # for mmmerge score and lmms-eval users
    record_eval(run["model"], run, metrics)  # a model folder mmmerge merged: its card gets this result
    return metrics
