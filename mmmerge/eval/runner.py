"""`evaluate`: read a task, answer every question with batched greedy generation, score, write OUT.

Everything that can be wrong with the input (files, fields, images, the model folder) is found before the
first file is written, so a failed run leaves OUT as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from . import distributed as D
from .generate import Generator, build_prompt, load_model, prompt_lengths
from .tasks import EvalDataError, Task, get_task, read_task


def _open_image(path: Path, source, qid) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise EvalDataError(f"{source}: question {qid}: cannot read image {path} ({e})") from e


def _check_images_readable(samples, source) -> None:
    """Read every image header once (cheap), so a broken file stops the run before the model loads."""
    seen = set()
    for s in samples:
        if s.image not in seen:
            seen.add(s.image)
            try:
                with Image.open(s.image) as im:
                    im.size  # noqa: B018  (the header is parsed)
            except OSError as e:
                raise EvalDataError(f"{source}: question {s.question_id}: cannot read image {s.image} ({e})") from e


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fill(template: str, question: str) -> str:
    return template.replace("{question}", question)


def evaluate(model, task, *, questions=None, annotations=None, images=None, data=None, out, batch_size=8,
             limit=None, device=None, max_new_tokens=16, prompt=None, progress=True) -> dict:
    """Evaluate an image-text-to-text checkpoint folder `model` (LLaVA, LLaVA-NeXT, Qwen2-VL, Gemma 3, PaliGemma,
    Idefics3/SmolVLM, mllama, ...: each through its own processor and chat template) on `task` ("vqav2",
    "textvqa", "gqa", "pope", "scienceqa", "jsonl"); write OUT/predictions.json, metrics.json, samples.jsonl
    (and run.json, for eval-compare) and return the metrics. `data` is another name for the task's main file
    (`questions`).
    `prompt` replaces the task's template; it must contain "{question}". Under torchrun the questions are
    sharded over the ranks and rank 0 writes the files; every rank returns the metrics."""
    t = get_task(task) if isinstance(task, str) else task
    if not isinstance(t, Task):
        raise EvalDataError(f"task must be a name or a Task, not {type(task).__name__}")
    if questions is not None and data is not None:
        raise EvalDataError("give the task's file as `questions` or as `data`, not both")
    questions = questions if questions is not None else data
    template = prompt if prompt is not None else t.prompt
    if "{question}" not in template:
        raise EvalDataError(f"prompt {template!r} has no {{question}} placeholder")
    if batch_size < 1 or max_new_tokens < 1 or (limit is not None and limit < 1):
        raise EvalDataError("batch_size, max_new_tokens and limit must be at least 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvalDataError(f"{out}: exists and is not a folder")

    samples = read_task(t, questions, annotations, images, limit)
    _check_images_readable(samples, questions)
    ranks = D.setup(device)
    try:
        model_obj, processor = load_model(model, ranks.device, progress=progress and ranks.main)
        prompts = [build_prompt(processor, _fill(template, s.question)) for s in samples]
        # Longest first, so a batch holds prompts of similar length (little padding); ranks take every
        # world-th one, so their shares are alike.
        # (Counted as the prompts are encoded: a BOS the chat template wrote is not added again.)
        lengths = prompt_lengths(processor, prompts)
        order = sorted(range(len(samples)), key=lambda i: -lengths[i])[ranks.rank::ranks.world]
        gen = Generator(model_obj, processor, max_new_tokens=max_new_tokens, name=model)
        raw = {}
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc=f"eval {t.name}", unit="batch", disable=not progress or not ranks.main):
            ims = [_open_image(samples[i].image, questions, samples[i].question_id) for i in batch]
            raw.update(zip(batch, gen([prompts[i] for i in batch], ims)))
        shards = D.gather(raw, ranks)
        metrics = None
        if ranks.main:
            for shard in shards:
                raw.update(shard)
            metrics = _score_and_write(t, samples, prompts, [raw[i] for i in range(len(samples))], out,
                                       dict(model=str(model), task=t.name, questions=len(samples),
                                            batch_size=batch_size, max_new_tokens=max_new_tokens, prompt=template,
                                            world_size=ranks.world, headline=t.headline))
        return D.broadcast(metrics, ranks)
    finally:
        D.teardown(ranks)


def _score_and_write(task: Task, samples, prompts, raws, out: Path, run: dict) -> dict:
    answers = [task.answer(r) for r in raws]
    scores = [task.score(a, s) for a, s in zip(answers, samples)]
    metrics = task.metrics(samples, answers, scores)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "predictions.json", json.dumps([{"question_id": s.question_id, "answer": a}
                                                 for s, a in zip(samples, answers)]))
    _write(out / "samples.jsonl", "".join(
        json.dumps({"question_id": s.question_id, "image": str(s.image), "question": s.question, "prompt": p,
                    "raw": r, "answer": a, "score": sc, "target": s.target}) + "\n"
        for s, p, r, a, sc in zip(samples, prompts, raws, answers, scores)))
    _write(out / "metrics.json", json.dumps(metrics, indent=2))
    _write(out / "run.json", json.dumps(run, indent=2))
    return metrics
