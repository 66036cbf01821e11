"""Batched greedy generation whose answers do not depend on the batch size.

Left padding with the attention mask (transformers derives position ids from it) makes a padded row compute
the same function as the row alone; what remains is float rounding, which differs with the shapes of a batch
(about 1e-5 in float32). So: float32 (TF32 off), and a guard against that rounding deciding a token: when, at
a step a row still generates, its best two logits are closer than `tie_tol` (relative), the row is generated
again alone — exactly what batch size 1 computes. An answer then equals its batch-size-1 answer whenever
the rounding is smaller than the guard, which float32 keeps it by orders of magnitude.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from ..errors import MMMergeError
from ..io.reader import first_line


class ModelLoadError(MMMergeError):
    """The model folder is not a transformers image-text-to-text checkpoint with its processor."""


def load_model(path, device: str, progress: bool = True):
    """A LLaVA-style checkpoint and its processor, from a local folder only, in float32 on `device`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..adapters.hf_common import transformers_bars

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model folder")
    try:
        with transformers_bars(progress):
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{path}: cannot load a LLaVA-style model with its processor ({first_line(e)})") from e
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise ModelLoadError(f"{path}: the processor has no tokenizer or image processor")
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model.to(device).eval(), processor


def build_prompt(processor, text: str) -> str:
    """The processor's chat template with one image and the text; LLaVA-1.5's format when it has none."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"USER: {getattr(processor, 'image_token', '<image>')}\n{text} ASSISTANT:"


@contextmanager
def exact_float32():
    """TF32 off for matmuls and convolutions while generating (restored afterwards)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class Generator:
    """`gen(prompts, images) -> texts`: greedy answers for one batch."""

    def __init__(self, model, processor, max_new_tokens: int = 16, tie_tol: float = 1e-3):
        from transformers import GenerationConfig

        tok = processor.tokenizer
        self.model, self.processor, self.tie_tol = model, processor, tie_tol
        eos = model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id])
        self.config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                       pad_token_id=tok.pad_token_id, eos_token_id=sorted(self.eos),
                                       bos_token_id=model.generation_config.bos_token_id, output_scores=True,
                                       return_dict_in_generate=True)
        self.reruns = 0  # rows generated again alone (near ties)

    @torch.inference_mode()
    def _run(self, prompts: list[str], images: list[Image.Image]) -> tuple[list[str], list[int]]:
        device = self.model.device
        enc = self.processor(images=images, text=prompts, return_tensors="pt", padding=True).to(device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(torch.float32)
        out = self.model.generate(**enc, generation_config=self.config)
        new = out.sequences[:, enc["input_ids"].shape[1]:].cpu()
        texts = self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        ties = []
        top2 = torch.stack(out.scores, 1).float().topk(2, -1).values.cpu()  # [batch, step, 2], one transfer
        for i in range(len(prompts)):
            for step in range(top2.shape[1]):
                top = top2[i, step]
                if top[0] - top[1] < self.tie_tol * max(1.0, abs(top[0].item())):
                    ties.append(i)
                    break
                if new[i, step].item() in self.eos:
                    break
        return [t.strip() for t in texts], ties

    def __call__(self, prompts: list[str], images: list[Image.Image]) -> list[str]:
        with exact_float32():
            texts, ties = self._run(prompts, images)
            if len(prompts) > 1:
                for i in ties:
                    texts[i] = self._run([prompts[i]], [images[i]])[0][0]
                    self.reruns += 1
        return texts
