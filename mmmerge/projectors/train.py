"""The alignment stage in a few lines: vision encoder and LLM frozen, the projector trained on captioning.

The model is a `LlavaForConditionalGeneration` and the processor its `LlavaProcessor`; each example is
`<image>` + "\\n" + caption + eos, and the loss covers the caption and eos tokens only (LLaVA's
pretraining stage). AdamW with linear warmup and cosine decay; on CUDA the frozen model may be bf16
while the projector trains in float32 under autocast.
"""

from __future__ import annotations

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


def train_projector(model, processor, pairs: list[Pair], *, steps: int = 100, lr: float = 1e-3,
                    batch_size: int = 8, warmup: float = 0.03, weight_decay: float = 0.0, device: str | None = None,
                    seed: int = 0, progress: bool = True) -> list[float]:
    """Train `model.model.multi_modal_projector` in place; return the loss of every step."""
    from tqdm.auto import tqdm

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
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(steps * warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    autocast = device.startswith("cuda") and next(model.model.language_model.parameters()).dtype != torch.float32
    bar = tqdm(range(steps), desc="projector training", disable=not progress, unit="step")
    torch.manual_seed(seed)
    for _ in bar:
        if len(order) < batch_size:
            more = list(range(len(pairs)))
            rng.shuffle(more)
            order += more * max(1, math.ceil(batch_size / len(pairs)))
        idx, order = order[:batch_size], order[batch_size:]
        batch = {k: v.to(device) for k, v in caption_batch(processor, [pairs[i] for i in idx]).items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(next(model.model.vision_tower.parameters()).dtype)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    for p in projector.parameters():
        p.requires_grad_(False)
    return losses
