"""Alignment data (image-caption JSONL + image folder) and closed-form projector fitting from it.

Each JSONL line names an image and its caption:
  {"image": "relative/or/absolute.jpg", "caption": "a red square"}
`text` works for `caption`, and LLaVA's pretraining format too (`conversations`: the last `gpt` turn is
the caption). Relative image paths are looked up under the image folder (default: the JSONL's folder).

The closed-form fit pairs, per image, the mean of its projector inputs (the selected vision tokens of
the feature layer) with the mean input embedding of its caption's tokens, and fits an affine map
between them. A linear projector applied to every token moves their mean by the same map, so the image
tokens land, on average, where the caption's tokens are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import RecipeError, UnreadableFileError
from ..io import read_jsonl
from ..images import DEFAULT_MAX_PIXELS, image_size, open_rgb
from .fit import LinearFit, fit_linear
from .modules import Projector


@dataclass(frozen=True)
class Pair:
    image: Path
    caption: str


def _caption(row: dict) -> str | None:
    for key in ("caption", "text"):
        if isinstance(row.get(key), str):
            return row[key]
    turns = row.get("conversations")
    if isinstance(turns, list):
        answers = [t.get("value") for t in turns if isinstance(t, dict) and t.get("from") in ("gpt", "assistant")]
        if answers and isinstance(answers[-1], str):
            return answers[-1]
    return None


def read_pairs(jsonl: Path, image_folder: Path | None = None, *,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Pair]:
    """Every (image, caption) pair of the file; a bad line, a missing image or an image over `max_pixels` (read
    from its header, nothing is decoded) names the file and line."""
    jsonl = Path(jsonl)
    if not jsonl.is_file():
        raise UnreadableFileError(f"{jsonl}: no such alignment file (one JSON object per line: image, caption)")
    folder = Path(image_folder) if image_folder is not None else jsonl.parent
    if not folder.is_dir():
        raise UnreadableFileError(f"{folder}: no such image folder")
    pairs = []
    for n, row in read_jsonl(jsonl):
        caption = _caption(row)
        if not isinstance(row.get("image"), str) or caption is None:
            raise UnreadableFileError(f"{jsonl}:{n}: needs an 'image' path and a 'caption' (or 'text' / LLaVA "
                                      "'conversations')")
        image = Path(row["image"])
        image = image if image.is_absolute() else folder / image
        if not image.is_file():
            raise UnreadableFileError(f"{jsonl}:{n}: image {image} does not exist")
        try:
            image_size(image, max_pixels=max_pixels)
        except UnreadableFileError as e:
            raise type(e)(f"{jsonl}:{n}: {e}") from e
        pairs.append(Pair(image, caption.replace("<image>", "").strip()))
    if not pairs:
        raise UnreadableFileError(f"{jsonl}: holds no image-caption pairs")
    return pairs


def load_image(path: Path):
    """The image as RGB; its size was checked when the pairs were read (`read_pairs`)."""
    return open_rgb(path, max_pixels=None)


def select_features(hidden_states, layer: int | list[int], strategy: str) -> torch.Tensor:
    """What LLaVA feeds its projector: the feature layer(s), without the class token under 'default'."""
    layers = [layer] if isinstance(layer, int) else list(layer)
    states = [hidden_states[i] for i in layers]
    if strategy == "default":
        states = [s[:, 1:] for s in states]
    return torch.cat(states, dim=-1)


@torch.no_grad()
def image_features(vision_model, image_processor, pairs: list[Pair], layer: int | list[int], strategy: str, *,
                   batch_size: int = 16, device: str = "cpu", progress: bool = True) -> torch.Tensor:
    """[n, d] the mean projector input of each image."""
    from tqdm.auto import tqdm

    vision_model = vision_model.to(device).eval()
    dtype = next(vision_model.parameters()).dtype
    out = []
    for i in tqdm(range(0, len(pairs), batch_size), desc="image features", disable=not progress, unit="batch"):
        images = [load_image(p.image) for p in pairs[i:i + batch_size]]
        pixels = image_processor(images=images, return_tensors="pt")["pixel_values"].to(device, dtype)
        hidden = vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        out.append(select_features(hidden, layer, strategy).float().mean(1).cpu())
    return torch.cat(out)


def caption_embeddings(embeddings: torch.Tensor, tokenizer, captions: list[str]) -> torch.Tensor:
    """[n, d] the mean input embedding of each caption's tokens (no special tokens)."""
    rows = []
    for caption in captions:
        ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
        ids = [i for i in ids if i < embeddings.shape[0]]
        if not ids:
            raise RecipeError(f"caption {caption[:40]!r} has no tokens")
        rows.append(embeddings[ids].float().mean(0))
    return torch.stack(rows)


def fit_projector(X: torch.Tensor, Y: torch.Tensor, projector_type: str = "linear", method: str = "ridge",
                  alpha: float = 1e-4) -> tuple[Projector, LinearFit]:
    """A linear projector fitted in closed form to paired features (only `linear` has a closed form)."""
    if projector_type != "linear":
        raise RecipeError(f"closed-form fitting makes a linear projector, not {projector_type}; train it instead "
                          "(fit='train')")
    fit = fit_linear(X, Y, method, alpha)
    projector = Projector("linear", X.shape[1], Y.shape[1])
    with torch.no_grad():
        projector.linear_1.weight.copy_(fit.weight)
        projector.linear_1.bias.copy_(fit.bias)
    return projector, fit
