"""Fine-tune a LLaVA folder on image-question-answer examples and write a new LLaVA folder.

This is LLaVA's instruction-tuning stage in small: each example is the chat-template prompt (image, question,
the LLaVA-1.5 VQA instruction) followed by the answer and `</s>`; the loss covers the answer and `</s>`
only. Which parts train is a choice (`train`): LLaVA-1.5 trains the projector and the LLM and keeps the
vision tower frozen. AdamW without weight decay, so parameters the data does not touch stay exactly at the
starting point, which keeps task vectors clean for merging.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import RecipeError, UnreadableFileError
from ..io import read_jsonl, writes_output
from ..validate import finite_number

VQA_INSTRUCTION = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQAv2 prompt
PARTS = ("vision", "projector", "language")


@dataclass(frozen=True)
class Example:
    image: Path
    question: str
    answer: str
    question_type: str = ""
    instruction: str | None = VQA_INSTRUCTION  # appended to the question; None for a plain request (a caption)


def read_examples(jsonl: Path, image_folder: Path | None = None, question_types=None) -> list[Example]:
    """Examples of a JSONL file ({"image", "question", "answer"[, "question_type"]} per line), optionally only
    some question types; relative image paths are under `image_folder` (default: the file's folder)."""
    jsonl = Path(jsonl)
    folder = Path(image_folder) if image_folder is not None else jsonl.parent
    out = []
    for n, row in read_jsonl(jsonl):
        if not all(isinstance(row.get(k), str) for k in ("image", "question", "answer")):
            raise UnreadableFileError(f"{jsonl}:{n}: needs 'image', 'question' and 'answer' strings")
        if question_types is not None and row.get("question_type") not in question_types:
            continue
        image = Path(row["image"])
        out.append(Example(image if image.is_absolute() else folder / image, row["question"], row["answer"],
                           row.get("question_type", "")))
    return out


CAPTION_REQUEST = "describe the image."


def caption_examples(jsonl: Path, image_folder: Path | None = None, request: str = CAPTION_REQUEST) -> list[Example]:
    """Fine-tuning examples from an image-caption JSONL (the `stitch --align-data` file): `request` as the question,
    the caption as the answer, no VQA instruction; LLaVA's captioning stage in the form `finetune` takes."""
    from ..projectors.align import read_pairs

    return [Example(p.image, request, p.caption, "caption", None) for p in read_pairs(jsonl, image_folder)]


def qa_prompt(processor, question: str, instruction: str | None = VQA_INSTRUCTION) -> str:
    """The prompt a LLaVA-1.5 model sees for a VQA question: exactly what `mmmerge.eval` builds."""
    from ..eval.generate import build_prompt

    return build_prompt(processor, f"{question}\n{instruction}" if instruction else question)


class Batches:
    """Token ids, label masks and pixel values prepared once; `batch(indices)` pads them on the right."""

    def __init__(self, processor, examples: list[Example]):
        from ..projectors.align import load_image

        tok = processor.tokenizer
        paths = sorted({e.image for e in examples})
        where = {p: i for i, p in enumerate(paths)}
        images = [load_image(p) for p in paths]
        self.pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        prompts: dict[tuple, list[int]] = {}
        self.rows = []
        for e in examples:
            key = (e.question, e.instruction)
            if key not in prompts:  # the image-token count is the same for every image
                prompts[key] = processor(images=images[:1], text=qa_prompt(processor, e.question, e.instruction),
                                         return_tensors="pt")["input_ids"][0].tolist()
            prompt = prompts[key]
            answer = tok(" " + e.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            self.rows.append((prompt + answer, len(prompt), where[e.image]))
        self.pad = tok.pad_token_id

    def __len__(self):
        return len(self.rows)

    def batch(self, indices: list[int]) -> dict:
        rows = [self.rows[i] for i in indices]
        width = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100)
        for r, (ids, start, _) in enumerate(rows):
            input_ids[r, :len(ids)] = torch.tensor(ids)
            mask[r, :len(ids)] = 1
            labels[r, start:len(ids)] = torch.tensor(ids[start:])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
                "pixel_values": self.pixels[[i for _, _, i in rows]]}


def trainable(model, train) -> list[torch.nn.Parameter]:
    """Freeze everything but the named parts (vision, projector, language) and return their parameters."""
    unknown = set(train) - set(PARTS)
    if unknown or not train:
        raise RecipeError(f"train must name some of {', '.join(PARTS)}; got {sorted(train)}")
    modules = {"vision": [model.model.vision_tower], "projector": [model.model.multi_modal_projector],
               "language": [model.model.language_model, model.lm_head]}
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for part in train:
        for m in modules[part]:
            for p in m.parameters():
                p.requires_grad_(True)
                params.append(p)
    return params


def train_loop(model, data: Batches, params, *, steps: int, lr: float, batch_size: int, seed: int, device: str,
               progress: bool, desc: str) -> list[float]:
    """The shared training loop (`projectors.train.run_steps`, a short warmup and cosine decay) over shuffled
    epochs of `data`; the loss of every step."""
    from ..projectors.train import run_steps

    rng = random.Random(seed)
    order: list[int] = []

    def next_batch() -> dict:
        nonlocal order
        while len(order) < batch_size:
            more = list(range(len(data)))
            rng.shuffle(more)
            order += more
        idx, order = order[:batch_size], order[batch_size:]
        return {k: v.to(device) for k, v in data.batch(idx).items()}

    model.to(device).train()
    losses = run_steps(model, params, next_batch, steps=steps, lr=lr, warmup_steps=max(1, steps // 20),
                       progress=progress, desc=desc, leave=False)
    model.eval()
    return losses


@writes_output(inputs=("llava",))
def finetune(llava: Path, out: Path, examples: list[Example], *, steps: int = 200, lr: float = 1e-3,
             batch_size: int = 32, train=("projector", "language"), device: str | None = None, seed: int = 0, force: bool = False, progress: bool = True,
             desc: str = "fine-tuning") -> list[float]:
    """Fine-tune the LLaVA folder `llava` on `examples`, write the result (weights, config, processor) to `out`,
    and return the training losses. `train`: which parts learn (vision, projector, language)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from ..io import atomic_output_dir, check_output_dir

    if steps < 1 or batch_size < 1 or not examples:
        raise RecipeError(f"fine-tuning needs steps >= 1, batch_size >= 1 and examples (got {steps}, {batch_size}, "
                          f"{len(examples)} examples)")
    finite_number("lr", lr, low=0, low_open=True)
    check_output_dir(Path(out), force)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(llava)
    model = LlavaForConditionalGeneration.from_pretrained(llava, dtype=torch.float32)
    data = Batches(processor, examples)
    torch.manual_seed(seed)
    losses = train_loop(model, data, trainable(model, train), steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                        device=device, progress=progress, desc=desc)
    with atomic_output_dir(Path(out), force) as tmp:
        model.cpu().save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return losses
