"""`<image>` (and a pad token) in the tokenizer, and embedding rows for the new tokens.

When a token is new, the embedding rows (and untied lm_head rows) grow to a multiple of 64 as LLaVA's conversion
does, the new rows drawn from a normal with the old rows' mean and 1e-5 times their covariance (reproducible: a
fixed seed).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..checkpoint import Component, LazyTensor
from ..errors import ShapeMismatchError

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
PAD_MULTIPLE = 64
INIT_SCALE = 1e-5  # LLaVA's conversion: MultivariateNormal(mu, 1e-5 * sigma)
COVARIANCE_ROWS = 32768  # rows used to estimate the covariance of a larger table (all rows give the mean)


def prepare_tokenizer(tokenizer) -> list[str]:
    """Add `<image>` (and a pad token when there is none) as special tokens; return what was added."""
    from tokenizers import AddedToken

    added = []
    ids = tokenizer.encode(IMAGE_TOKEN, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids[0]) != IMAGE_TOKEN:
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        added.append(IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        added.append(PAD_TOKEN)
    return added


def rows_for(tokenizer, old_rows: int) -> int:
    """Embedding rows the tokenizer needs: `old_rows` when its ids fit, else a multiple of 64 that holds them."""
    needed = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    return old_rows if needed <= old_rows else math.ceil(needed / PAD_MULTIPLE) * PAD_MULTIPLE


def new_rows(table: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` rows drawn from N(mean, 1e-5 · covariance) of `table`'s rows (the mean if that is degenerate)."""
    old = table.float()
    mu = old.mean(0)
    sample = old
    if old.shape[0] > COVARIANCE_ROWS:
        g = torch.Generator().manual_seed(seed)
        sample = old[torch.randperm(old.shape[0], generator=g)[:COVARIANCE_ROWS]]
    centered = sample - mu
    sigma = (centered.T @ centered).double() / sample.shape[0]
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(count, old.shape[1], generator=g, dtype=torch.float64)
    try:
        L = torch.linalg.cholesky(INIT_SCALE * sigma)
        rows = mu.double() + z @ L.T
    except RuntimeError:  # not positive definite (fewer rows than dimensions, constant columns ...)
        rows = mu.double().expand(count, -1)
    return rows.to(table.dtype)


def grow(t: LazyTensor, rows: int, seed: int) -> LazyTensor:
    """`t` ([vocab, d]) with rows appended up to `rows`, lazily."""
    if rows == t.shape[0]:
        return t
    return t.derive(lambda x: torch.cat([x, new_rows(x, rows - x.shape[0], seed)]), (rows, t.shape[1]))


def resize_language(language: Component, rows: int, seed: int, emb_in: str, emb_out: str | None) -> Component:
    """The language component with its embedding `emb_in` (and untied lm_head `emb_out`) rows grown and
    vocab_size updated."""
    from ..adapters.hf_common import layout_of

    tensors = dict(language.tensors)
    old = tensors[emb_in].shape[0]
    if rows != old:
        tensors[emb_in] = grow(tensors[emb_in], rows, seed)
        if emb_out is not None and emb_out in tensors:
            if tensors[emb_out].shape[0] != old:
                raise ShapeMismatchError(f"{emb_out} has {tensors[emb_out].shape[0]} rows, {emb_in} {old}")
            tensors[emb_out] = grow(tensors[emb_out], rows, seed + 2)
    config = {**language.config, "vocab_size": rows}
    out = dataclasses.replace(language, config=config, tensors=tensors)
    # a tied duplicate (lm_head of tied embeddings) is optional: drop it rather than keep a stale copy
    _, optional = layout_of(out)
    out.tensors = {k: v for k, v in tensors.items() if k not in optional}
    return out
