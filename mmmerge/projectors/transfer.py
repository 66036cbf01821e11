"""Move a projector from one LLM to another through their shared vocabulary.

A projector maps vision features into the input-embedding space of the LLM it was trained with. For
token strings both tokenizers hold, the two LLMs' input-embedding rows are paired; an affine map fitted
on those pairs (ridge least squares or Procrustes) carries the source space to the target space, and is
folded into the projector's last layer. The fit residual on the shared tokens says how well the two
spaces correspond (0: exactly an affine image of each other).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import RecipeError
from .fit import LinearFit, fit_linear
from .language import embedding_names, load_tokenizer, shared_vocabulary
from .modules import Projector, compose

MIN_SHARED = 16


@dataclass
class TransferReport:
    source: str
    target: str
    method: str
    shared_tokens: int
    residual: float
    source_hidden_size: int
    target_hidden_size: int


def input_embeddings(path: Path) -> torch.Tensor:
    """The input-embedding table of a causal LM or of a LLaVA's language model."""
    from ..adapters import open_checkpoint

    language = open_checkpoint(path).component("language")
    name, _ = embedding_names(language)
    return language.tensors[name].load()


def embedding_map(source: Path, target: Path, method: str = "ridge", alpha: float = 1e-4,
                  target_tokenizer=None, target_embeddings: torch.Tensor | None = None) -> tuple[LinearFit, int]:
    """The affine map from `source`'s input embeddings to `target`'s, fitted on their shared tokens."""
    tok_s = load_tokenizer(source)
    tok_t = target_tokenizer if target_tokenizer is not None else load_tokenizer(target)
    emb_s = input_embeddings(source)
    emb_t = target_embeddings if target_embeddings is not None else input_embeddings(target)
    ids_s, ids_t = shared_vocabulary(tok_s, tok_t, emb_s.shape[0], emb_t.shape[0])
    if len(ids_s) < MIN_SHARED:
        raise RecipeError(f"{source} and {target} share only {len(ids_s)} token strings (need {MIN_SHARED}); their "
                          "vocabularies are too different to transfer a projector")
    return fit_linear(emb_s[ids_s].float(), emb_t[ids_t].float(), method, alpha), len(ids_s)


def transfer_projector(projector: Projector, source: Path, target: Path, method: str = "ridge", alpha: float = 1e-4,
                       target_tokenizer=None, target_embeddings: torch.Tensor | None = None) -> tuple[Projector, TransferReport]:
    """`projector` (made for the LLM at `source`) re-targeted at the LLM at `target`, and the fit report."""
    fit, shared = embedding_map(source, target, method, alpha, target_tokenizer, target_embeddings)
    if fit.weight.shape[1] != projector.out_features:
        raise RecipeError(f"the projector outputs {projector.out_features} features but {source}'s embeddings have "
                          f"{fit.weight.shape[1]}: it was not made for that language model")
    report = TransferReport(str(source), str(target), fit.method, shared, fit.residual, fit.weight.shape[1],
                            fit.weight.shape[0])
    return compose(projector, fit.weight, fit.bias), report
