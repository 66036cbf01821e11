"""The alignment stage in a few lines: vision encoder and LLM frozen, the projector trained on captioning.

The model is a `LlavaForConditionalGeneration` and the processor its `LlavaProcessor`; each example is
`<image>` + "\\n" + caption + eos, and the loss covers the caption and eos tokens only (LLaVA's
pretraining stage). AdamW with linear warmup and cosine decay; on CUDA the frozen model may be bf16
while the projector trains in float32 under autocast.
"""

from __future__ import annotations

import contextlib
import math
import random

import torch

from ..errors import RecipeError
from .align import Pair, load_image

PROMPT = "<image>\n"


def caption_batch(processor, pairs: list[Pair], prompt: str = PROMPT) -> dict:
    """Tokenized inputs with labels: -100 on the prompt, the image tokens and the padding."""
    tok = processor.tokenizer
    images = [load_image(p.image) for p in pairs]
    eos = tok.eos_token or ""
    texts = [prompt + p.caption + eos for p in pairs]
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
        prompt_len = len(processor(images=images[:1], text=[prompt], return_tensors="pt")["input_ids"][0])
    finally:
        tok.padding_side = side
    labels = batch["input_ids"].clone()
    labels[:, :prompt_len] = -100
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return batch


def run_steps(model, params, next_batch, *, steps: int, lr: float, warmup_steps: int, weight_decay: float = 0.0,
              autocast: bool = False, progress: bool = True, desc: str = "training", leave: bool = True) -> list[float]:
    """The training loop of the alignment stage and of fine-tuning: AdamW, linear warmup then cosine decay,
    gradients clipped to norm 1; `next_batch()` gives each step's inputs (with labels). Returns every loss."""
    from tqdm.auto import tqdm

    optim = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step", leave=leave)
    for _ in bar:
        batch = next_batch()
        with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss = model(**batch).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


def train_projector(model, processor, pairs: list[Pair], *, steps: int = 100, lr: float = 1e-3,
                    batch_size: int = 8, warmup: float = 0.03, weight_decay: float = 0.0, device: str | None = None,
                    seed: int = 0, progress: bool = True) -> list[float]:
    """Train `model.model.multi_modal_projector` in place; return the loss of every step."""
    if steps < 1 or batch_size < 1:
        raise RecipeError(f"training needs steps >= 1 and batch_size >= 1 (got {steps}, {batch_size})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    projector = model.model.multi_modal_projector
    for p in model.parameters():
        p.requires_grad_(False)
    projector.float()
    for p in projector.parameters():
        p.requires_grad_(True)
    model.to(device)
    model.train()
    params = [p for p in projector.parameters()]
    rng = random.Random(seed)
    order: list[int] = []
    autocast = device.startswith("cuda") and next(model.model.language_model.parameters()).dtype != torch.float32
    tower_dtype = next(model.model.vision_tower.parameters()).dtype

    def next_batch() -> dict:
        nonlocal order
        if len(order) < batch_size:
            more = list(range(len(pairs)))
            rng.shuffle(more)
            order += more * max(1, math.ceil(batch_size / len(pairs)))
        idx, order = order[:batch_size], order[batch_size:]
        batch = {k: v.to(device) for k, v in caption_batch(processor, [pairs[i] for i in idx]).items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(tower_dtype)
        return batch

    torch.manual_seed(seed)
    losses = run_steps(model, params, next_batch, steps=steps, lr=lr, warmup_steps=max(1, int(steps * warmup)),
                       weight_decay=weight_decay, autocast=autocast, progress=progress, desc="projector training")
    model.eval()
    for p in projector.parameters():
        p.requires_grad_(False)
    return losses
