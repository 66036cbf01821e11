"""Router rows from prompts, as mergekit-moe 0.1.5 computes them (mergekit/moe/router.py), one row per gated
expert and layer: a tensor (layers, experts, hidden).

- hidden: the base run in bfloat16; at each layer's input, the hidden state of each prompt's last token
  (`hidden_avg`: the mean over the sequence, padding included), averaged over the prompts, minus the negative
  prompts' vector, L2-normalised; all in bfloat16, as mergekit leaves it.
- cheap_embed: the sum of the prompts' token embeddings in float32 (padding left out), normalised, minus the
  negative prompts' normalised sum, normalised again; the same row at every layer.
- random: standard normal; uniform_random: U(-1/sqrt(hidden), 1/sqrt(hidden)), nn.Linear's initialisation;
  both drawn from `generator` (mergekit draws from torch's global one after `--random-seed`).

Prompts are tokenized as mergekit does: the bos token + prompt, no other special tokens, left-padded with the
bos token as padding (the eos token when there is no bos).

A vision-language base runs whole (vision tower and projector too). Its text prompts are encoded as above; a
prompt with an image is the user turn of the processor's chat template with the image and the text (as `eval` and
`generate` ask a question), cut after the text; it runs alone and counts in the average as one prompt.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from .config import Expert, ImagePrompt


def tokenizer_for_prompts(base: Path):
    from ..projectors.language import load_tokenizer

    tokenizer = load_tokenizer(base)
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize(tokenizer, prompts: list[str]):
    return tokenizer([(tokenizer.bos_token or "") + p for p in prompts], return_tensors="pt", padding=True,
                     add_special_tokens=False)


def random_gates(mode: str, shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    if mode == "random":
        return torch.randn(shape, generator=generator)
    scale = math.sqrt(1.0 / shape[-1])
    return torch.rand(shape, generator=generator) * 2 * scale - scale


def embedding_vector(embed: torch.Tensor, num_layers: int) -> Callable:
    """cheap_embed: the normalised sum of the prompts' token embeddings (a row of `embed` per token, as
    mergekit's one-hot product gives it), repeated for every layer."""
    table = embed.float()

    def vector(tokens) -> torch.Tensor:
        h = table[tokens["input_ids"]]  # (batch, seq, hidden)
        summed = (h * tokens["attention_mask"].unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
        return (summed / summed.norm(dim=-1, keepdim=True).clamp(min=1e-8)).repeat(num_layers, 1)

    return vector


def hidden_vector(base: Path, device: torch.device, *, average: bool, vlm: bool) -> Callable:
    """hidden: the prompts' mean hidden state at each layer's input (the last token's, or with `average` the mean
    over the sequence), from the base run in bfloat16 (a `vlm` base as its image-text-to-text class)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from ..adapters.hf_common import transformers_bars

    auto = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    with transformers_bars(False):  # loading the base is a step of the run, not a run of its own
        model = auto.from_pretrained(base, dtype=torch.bfloat16).to(device).eval()

    def vector(tokens) -> torch.Tensor:
        with torch.no_grad():
            out = model(**tokens.to(device), output_hidden_states=True, return_dict=True)
        states = torch.stack(out.hidden_states[:-1])  # (layers, batch, seq, hidden)
        states = states.sum(dim=2) / states.shape[2] if average else states[:, :, -1, :]
        return (states.sum(dim=1) / states.shape[1]).cpu()

    return vector


def image_inputs(base: Path, folder: Path | None) -> Callable:
    """An image prompt's model inputs: the user turn `eval` and `generate` write for a question about an image (the
    chat template, which places the image), cut after the prompt's text. Cut there, the last token is the prompt's
    own, as for a text prompt; the template's closing tokens are the same for every prompt and would leave the
    experts' rows hardly apart."""
    from ..eval.ask import open_image
    from ..eval.generate import build_prompt, load_processor, special_tokens_for

    processor = load_processor(base)

    def encode(prompt: ImagePrompt):
        text = build_prompt(processor, prompt.text)
        end = text.rfind(prompt.text)  # the last token is the prompt's own, as for a text prompt
        text = text[:end + len(prompt.text)] if end >= 0 else text
        return processor(images=[open_image((folder or Path()) / prompt.image)], text=[text], return_tensors="pt",
                         add_special_tokens=special_tokens_for(processor, [text]))

    return encode


def mean_vector(vector: Callable, tokenizer, encode: Callable | None, prompts: list) -> torch.Tensor:
    """The prompts' mean vector: the text prompts in one batch, as mergekit runs them; each image prompt alone,
    weighted as one prompt."""
    texts = [p for p in prompts if isinstance(p, str)]
    images = [p for p in prompts if not isinstance(p, str)]
    if not images:
        return vector(tokenize(tokenizer, texts))
    parts = [vector(tokenize(tokenizer, texts)).float() * len(texts)] if texts else []
    parts += [vector(encode(p)).float() for p in images]
    return (torch.stack(parts).sum(dim=0) / len(prompts)).to(torch.bfloat16)


def prompt_gates(mode: str, experts: list[Expert], base: Path, *, embed: Callable[[], torch.Tensor],
                 num_layers: int, device: torch.device, vlm: bool = False, folder: Path | None = None) -> torch.Tensor:
    """(layers, experts, hidden) gate rows of `experts` from their prompts; image paths are relative to `folder`."""
    tokenizer = tokenizer_for_prompts(base)
    if mode == "cheap_embed":
        vector = embedding_vector(embed(), num_layers)
    else:
        vector = hidden_vector(base, device, average=mode == "hidden_avg", vlm=vlm)
    encode = image_inputs(base, folder) if any(e.image_prompts() for e in experts) else None
    rows = []
    for expert in experts:
        v = mean_vector(vector, tokenizer, encode, expert.positive_prompts)
        if expert.negative_prompts:
            v -= mean_vector(vector, tokenizer, encode, expert.negative_prompts)
        v /= v.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        rows.append(v)
    return torch.stack(rows, dim=0).permute(1, 0, 2)


def degenerate_layers(gates: torch.Tensor, threshold: float = 5.0) -> list[int]:
    """Layers whose gate rows are nearly linearly dependent (condition number above `threshold`, mergekit-moe's
    test): some experts' prompts are too alike, and the router will rarely tell those experts apart."""
    return [layer for layer in range(gates.shape[0]) if torch.linalg.cond(gates[layer].float()) > threshold]
