"""What projectors need from a language model: its embedding tables, its tokenizer, shared vocabulary."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import Component
from ..errors import MMMergeError, UnreadableFileError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "tokenizer_config.json",
                   "tekken.json")
# word-start and whitespace markers of sentencepiece and byte-level BPE vocabularies
MARKERS = {"▁": " ", "Ġ": " ", "Ċ": "\n", "ĉ": "\t"}


def embedding_names(component: Component) -> tuple[str, str | None]:
    """(input embedding tensor name, output embedding tensor name or None when tied), as the files name them."""
    from ..adapters.hf_export import meta_model, to_file_names

    model = meta_model(component)
    emb_in, emb_out = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(p): n for n, p in model.named_parameters()}
    all_names = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    in_name = names[id(emb_in.weight)]
    out_name = None
    if emb_out is not None and emb_out.weight is not emb_in.weight:
        out_name = names[id(emb_out.weight)]
    def file_name(name: str) -> str:
        return next(iter(to_file_names(model, {name: all_names[name]})))

    in_file = file_name(in_name)
    out_file = file_name(out_name) if out_name else None
    if in_file not in component.tensors:
        raise MMMergeError(f"{component.arch}: input embedding {in_file} is missing from the language component")
    return in_file, out_file


def has_tokenizer(path: Path) -> bool:
    return Path(path).is_dir() and any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(path: Path):
    """The tokenizer of a model folder, offline; a folder without one is an error that says so."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not has_tokenizer(path):
        raise UnreadableFileError(f"{path}: has no tokenizer (looked for {', '.join(TOKENIZER_FILES[:4])}); copy the "
                                  "language model's tokenizer files into the folder")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises many kinds here (OSError, ValueError, ImportError ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnreadableFileError(f"{path}: its tokenizer does not load ({first})") from e


def token_key(token: str) -> str:
    for marker, text in MARKERS.items():
        token = token.replace(marker, text)
    return token


def shared_vocabulary(tok_a, tok_b, rows_a: int | None = None, rows_b: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of the token strings both tokenizers hold, as two aligned index tensors.

    Token strings are compared with the word-start markers of sentencepiece (▁) and byte-level BPE (Ġ)
    read as a space. Special and added tokens (often untrained, like `<image>`) are left out, as are
    strings that two ids of one vocabulary share and ids beyond an embedding table's rows.
    """
    def keyed(tok, rows):
        skip = set(tok.all_special_ids) | set(tok.get_added_vocab().values())
        out, dupes = {}, set()
        for token, i in tok.get_vocab().items():
            if i in skip or (rows is not None and i >= rows):
                continue
            k = token_key(token)
            if k in out:
                dupes.add(k)
            out[k] = i
        return {k: v for k, v in out.items() if k not in dupes}

    a, b = keyed(tok_a, rows_a), keyed(tok_b, rows_b)
    common = sorted(set(a) & set(b))
    return (torch.tensor([a[k] for k in common], dtype=torch.long),
            torch.tensor([b[k] for k in common], dtype=torch.long))
