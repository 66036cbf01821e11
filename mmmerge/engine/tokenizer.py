"""The output tokenizer of a recipe and the embedding rows that follow it, as mergekit 0.1.5 builds them.

`tokenizer_source: base` keeps the base model's vocabulary (its tokens below the model's vocab_size),
`union` appends every other model's tokens it lacks (in model order, then token id), a model takes that
model's tokenizer (a model outside the merge too: only its tokenizer is read); `tokenizer: {tokens: ...}` adds tokens and says where their rows come from. Then every
vocabulary tensor (embeddings, untied head) of every input is re-indexed to the output vocabulary before the
merge: a token keeps the model's own row where the model has it (unless `force`d); otherwise it takes the row
of the one model that has it, or the base model's, or the mean over the models that have it, or zeros when
none does; a `tokens:` entry names the source instead. Rows added by `pad_to_multiple_of` are the mean of
the real rows. The chat template (`chat_template:`) is written with the output tokenizer.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import Component, LazyTensor, combine
from ..errors import RecipeError
from .chat_templates import CHAT_TEMPLATES
from .recipe import MergeSection, TokenSetting, TokenSource


@dataclass
class TokenizerPlan:
    """What the output folder's tokenizer becomes; `write` runs after the side files are copied."""

    tokenizer: Any = None  # a transformers tokenizer to save (None: keep the copied one)
    chat_template: str | None = None

    def write(self, folder: Path) -> None:
        tokenizer = self.tokenizer
        if tokenizer is None:
            tokenizer = load_tokenizer(folder)
            if tokenizer is None:  # mergekit warns and goes on
                return
        if self.chat_template is not None:
            tokenizer.chat_template = self.chat_template
        tokenizer.save_pretrained(folder)


def load_tokenizer(folder: Path | None):
    """The folder's tokenizer, or None when it has none."""
    if folder is None or not any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                      "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise RecipeError(f"{folder}: its tokenizer does not load ({str(e).splitlines()[0]})") from None


def own_chat_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template.strip() if template else None


def resolve_chat_template(setting: str | None, tokenizers: list, where: str) -> str | None:
    """The template text a recipe's `chat_template` names (validated before anything is written)."""
    if setting is None:
        return None
    if setting == "auto":
        found = Counter(t for t in (own_chat_template(tok) for tok in tokenizers if tok is not None) if t)
        return found.most_common(1)[0][0] if found else None
    if setting in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[setting]
    if len(setting) < 20 or "{" not in setting:
        raise RecipeError(f"{where}chat_template: {setting!r} is neither a known name ({', '.join(CHAT_TEMPLATES)}, "
                          f"auto) nor a Jinja template")
    check_template_compiles(setting, where)
    return setting


def check_template_compiles(template: str, where: str) -> None:
    """A recipe's own Jinja template is compiled as transformers compiles it when the template is used, so that a
    syntax error stops the plan instead of the first chat with the merged model."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(template)
    except TemplateError as e:
        line = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise RecipeError(f"{where}chat_template: the Jinja template does not compile{line}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def plan_tokenizer(section: MergeSection, refs: list[str], folders: dict[str, Path | None],
                   comps: dict[str, Component], base_ref: str | None, where: str,
                   notes: list[str]) -> tuple[dict[str, Component], TokenizerPlan | None]:
    """The output tokenizer and the language components re-indexed to its vocabulary (unchanged when the recipe
    keeps the copied tokenizer)."""
    source = section.tokenizer.source if section.tokenizer is not None else section.tokenizer_source
    if source is None and section.chat_template is None:
        return comps, None
    base_ref = base_ref or refs[0]
    tokenizers = {r: load_tokenizer(folders.get(r)) for r in refs}
    template = resolve_chat_template(section.chat_template, list(tokenizers.values()), where)
    if source is None:
        return comps, TokenizerPlan(chat_template=template)
    if tokenizers[base_ref] is None:
        raise RecipeError(f"{where}tokenizer: the base model {base_ref} has no tokenizer to build the output's from")
    for r, tok in tokenizers.items():
        if tok is None:
            notes.append(f"{where}tokenizer: {r} has no tokenizer; taken to be the base model's, as mergekit does")
            tokenizers[r] = tokenizers[base_ref]
    sizes = {r: int(comps[r].config.get("vocab_size") or len(tokenizers[r])) for r in refs}
    vocabs = {r: {t: i for t, i in tokenizers[r].get_vocab().items() if i < sizes[r]} for r in refs}
    if source in ("base", "union") or source in refs:
        out = output_tokenizer(source, base_ref, refs, tokenizers, vocabs)
    else:
        out = outside_tokenizer(source, folders.get(source), where, notes)
    settings = dict(section.tokenizer.tokens or {}) if section.tokenizer is not None else {}
    new = [t for t in settings if t not in out.get_vocab()]
    if new:
        out.add_tokens(new)
    vocab = out.get_vocab()
    rows = len(vocab)
    pad = section.tokenizer.pad_to_multiple_of if section.tokenizer is not None else None
    if pad and rows % pad:
        rows += pad - rows % pad
    for token, setting in settings.items():
        check_setting(token, setting, refs, vocabs, sizes, where)
    loads = SharedLoads(consumers=len(refs))
    permuted = {r: reindex(comps[r], r, comps, vocab, vocabs, rows, settings, base_ref, loads) for r in refs}
    notes.append(f"{where}tokenizer: {source} vocabulary of {len(vocab)} tokens ({rows} rows)")
    return permuted, TokenizerPlan(out, template)


def plan_whole_tokenizer(section: MergeSection, refs: list[str], folders: dict[str, Path | None],
                         comps: dict[str, Component], vocabulary: dict[str, tuple[str, ...]], base_ref: str | None,
                         where: str, notes: list[str]) -> tuple[dict[str, Component], TokenizerPlan | None]:
    """`plan_tokenizer` for models merged whole (adapters/hf_whole.py): only the tensors indexed by token
    (`vocabulary`: each model's, as mergekit finds them) follow the output vocabulary; the others keep their shape."""
    source = section.tokenizer.source if section.tokenizer is not None else section.tokenizer_source
    lacking = next((r for r in refs if not vocabulary[r]), None)
    if source is not None and lacking is not None:
        raise RecipeError(f"{where}tokenizer_source: {lacking} declares no token embedding (its class's input "
                          f"embeddings) whose rows a tokenizer indexes")
    tokens = {r: Component(c.name, c.arch, {"vocab_size": c.tensors[vocabulary[r][0]].shape[0]} if vocabulary[r] else {},
                           {n: c.tensors[n] for n in vocabulary[r]}) for r, c in comps.items()}
    tokens, plan = plan_tokenizer(section, refs, folders, tokens, base_ref, where, notes)
    return {r: dataclasses.replace(c, tensors={**c.tensors, **tokens[r].tensors}) for r, c in comps.items()}, plan


def outside_tokenizer(source: str, folder: Path | None, where: str, notes: list[str]):
    """The tokenizer of a model that is not merged (mergekit reads it whole, and only it: the model's weights give
    no rows; a token no merged model has gets zeros)."""
    tokenizer = load_tokenizer(folder)
    if tokenizer is None:
        raise RecipeError(f"{where}tokenizer_source: {source} is not one of the merged models and has no tokenizer "
                          f"in {folder}")
    notes.append(f"{where}tokenizer: {source} is not merged; only its tokenizer is read")
    return tokenizer


def output_tokenizer(source: str, base_ref: str, refs: list[str], tokenizers: dict, vocabs: dict):
    """A fresh copy of the output tokenizer (the inputs' stay untouched)."""
    if source == "base":
        return copy.deepcopy(tokenizers[base_ref])
    if source != "union":
        return copy.deepcopy(tokenizers[source])
    out = copy.deepcopy(tokenizers[base_ref])
    have = set(out.get_vocab())
    order = [base_ref] + [r for r in refs if r != base_ref]
    added: dict[str, Any] = {}
    plain: list[str] = []
    for r in order:
        specials = {info.content: info for i, info in tokenizers[r].added_tokens_decoder.items() if i in
                    vocabs[r].values()}
        for token, _ in sorted(vocabs[r].items(), key=lambda kv: kv[1]):
            if token in specials:
                added.setdefault(token, specials[token])
            elif token not in have and token not in plain:
                plain.append(token)
    out.add_tokens(plain)
    out.add_tokens([info for token, info in added.items() if token not in out.get_vocab()])
    return out


def check_setting(token: str, setting: TokenSetting, refs: list[str], vocabs: dict, sizes: dict[str, int],
                  where: str) -> None:
    """A `tokens:` entry names a merged model and a token or row that model has (checked before any row is read)."""
    src = setting.source
    model = src.model if isinstance(src, TokenSource) else src
    if model is not None and model not in refs:
        raise RecipeError(f"{where}tokenizer.tokens[{token!r}]: {model} is not one of the merged models")
    if isinstance(src, TokenSource) and src.kind == "model_token" and src.token is not None \
            and src.token not in vocabs[src.model]:
        raise RecipeError(f"{where}tokenizer.tokens[{token!r}]: {src.model} has no token {src.token!r}")
    if isinstance(src, TokenSource) and src.kind == "model_token" and src.token_id is not None \
            and not 0 <= src.token_id < sizes[src.model]:
        raise RecipeError(f"{where}tokenizer.tokens[{token!r}]: token_id {src.token_id} is outside {src.model}'s "
                          f"vocabulary of {sizes[src.model]} tokens (ids 0..{sizes[src.model] - 1})")
    if isinstance(src, str) and token not in vocabs[src]:
        raise RecipeError(f"{where}tokenizer.tokens[{token!r}]: {src} has no such token to take the row of")


class SharedLoads:
    """Each model's vocabulary tensor read once for all the models whose re-indexed tensor needs it (every model's
    re-indexed rows are built from every model's tensor): kept until its `consumers` have taken it, then freed."""

    def __init__(self, consumers: int):
        self.consumers = consumers
        self.held: dict[tuple[str, int], list] = {}  # (tensor name, id of the LazyTensor) -> [tensor, takes left]

    def lazy(self, name: str, t: LazyTensor) -> LazyTensor:
        def load() -> torch.Tensor:
            key = (name, id(t))
            entry = self.held.setdefault(key, [None, self.consumers])
            if entry[0] is None:
                entry[0] = t.load()
            entry[1] -= 1
            value = entry[0]
            if entry[1] <= 0:
                del self.held[key]
            return value

        return LazyTensor(t.shape, t.dtype, load)


def reindex(component: Component, ref: str, comps: dict[str, Component], vocab: dict[str, int],
            vocabs: dict[str, dict[str, int]], rows: int, settings: dict[str, TokenSetting],
            base_ref: str, loads: SharedLoads | None = None) -> Component:
    """`component` with every vocabulary tensor's rows in the output vocabulary's order (its config's
    vocab_size too). `loads`: the inputs read once for every model's re-indexed tensor."""
    own_rows = int(component.config.get("vocab_size") or 0)
    tensors = dict(component.tensors)
    for name, t in component.tensors.items():
        if not t.shape or t.shape[0] != own_rows:
            continue
        peers = {r: c.tensors[name] for r, c in comps.items() if name in c.tensors}
        if loads is not None:
            peers = {r: loads.lazy(name, p) for r, p in peers.items()}
        order = list(peers)
        fn = RowBuilder(ref, order, vocab, vocabs, rows, settings, base_ref)
        dtype = peers[order[0]].dtype
        for p in peers.values():
            dtype = torch.promote_types(dtype, p.dtype)
        built = combine([peers[r] for r in order], fn, (rows, *t.shape[1:]))
        tensors[name] = dataclasses.replace(built, dtype=dtype)
    return dataclasses.replace(component, tensors=tensors, config={**component.config, "vocab_size": rows})


@dataclass
class RowBuilder:
    """Computes one model's re-indexed vocabulary tensor from every model's tensor of that name."""

    model: str
    order: list[str]
    vocab: dict[str, int]
    vocabs: dict[str, dict[str, int]]
    rows: int
    settings: dict[str, TokenSetting]
    base_ref: str

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        by_model = dict(zip(self.order, tensors))
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        own = by_model[self.model]
        out = torch.zeros((self.rows, *own.shape[1:]), dtype=dtype)
        mine = self.vocabs[self.model]
        for token, i in self.vocab.items():
            setting = self.settings.get(token)
            if token in mine and not (setting is not None and setting.force):
                out[i] = own[mine[token]]
            else:
                out[i] = self.default_row(token, by_model, dtype, own.shape[1:])
        if self.rows > len(self.vocab):
            out[len(self.vocab):] = out[:len(self.vocab)].mean(dim=0)
        return out

    def default_row(self, token: str, by_model: dict, dtype, shape) -> torch.Tensor:
        """The row of a token this model lacks (or whose source the recipe forces)."""
        setting = self.settings.get(token)
        holders = [r for r in self.order if token in self.vocabs[r]]
        if setting is None or setting.source is None:
            if len(holders) == 1:
                return by_model[holders[0]][self.vocabs[holders[0]][token]].to(dtype)
            if not holders:
                return torch.zeros(shape, dtype=dtype)
            if self.base_ref in holders:
                return by_model[self.base_ref][self.vocabs[self.base_ref][token]].to(dtype)
            total = torch.zeros(shape, dtype=dtype)
            for r in holders:
                total = total + by_model[r][self.vocabs[r][token]].to(dtype)
            return total / len(holders)
        src = setting.source
        if isinstance(src, TokenSource) and src.kind == "zero":
            return torch.zeros(shape, dtype=dtype)
        if isinstance(src, TokenSource):
            index = src.token_id if src.token_id is not None else self.vocabs[src.model][src.token]
            return by_model[src.model][index].to(dtype)
        return by_model[src][self.vocabs[src][token]].to(dtype)
