"""The inputs of one merge section, made mergeable by named steps before any task is planned:
open each model's component, make tied heads explicit where only some inputs tie them, name language models alike
where transformers saves a VLM's under other names than its text-only class (the VLM's names in an output of its
family, the text-only class's in-memory names otherwise), leave out extras
only some inputs carry, fit text-only Llamas to an Mllama language model (engine/cross_attention.py), then give
every input the output's vocabulary (the recipe's tokenizer) or, without one, cut vocabularies that differ only by
appended rows (a VLM's image tokens) to the shared rows."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..adapters import (WHOLE_COMPONENT as WHOLE, as_text_only_language, as_vlm_language, in_memory_layout, is_tied,
                        missing_from_class, untie, vocabulary_tensors)
from ..checkpoint import Checkpoint, Component, LazyTensor
from ..errors import ShapeMismatchError
from .cross_attention import fit_text_models
from .opener import Opener
from .recipe import MergeSection
from .tokenizer import TokenizerPlan, plan_tokenizer, plan_whole_tokenizer
from .vocab import align_vocabularies, drop_partial_extras


@dataclass
class SectionInputs:
    ckpts: dict[str, Checkpoint]
    paths: dict[str, str]
    comps: dict[str, Component]
    tokenizer: TokenizerPlan | None = None
    extra_rows: dict[str, LazyTensor] = field(default_factory=dict)  # appended vocabulary rows, copied unmerged
    kept: dict[str, LazyTensor] = field(default_factory=dict)  # tensors only one input has, copied unmerged
    vocab: int | None = None  # the output's vocabulary rows, where the steps changed them


def section_inputs(section: MergeSection, cname: str, opener: Opener, refs: list[str], ref_key: str, where: str,
                   notes: list[str], *, in_family: bool = False) -> SectionInputs:
    ckpts = {r: opener(r) for r in refs}
    paths = {r: str(opener.path(r)) for r in refs}
    comps = {r: ckpts[r].component(cname) for r in refs}
    tied = {r: cname == "language" and is_tied(c) for r, c in comps.items()}
    if any(tied.values()) and not all(tied.values()):
        comps = {r: untie(c) for r, c in comps.items()}
        notes.append(f"{where}{cname}: some inputs tie lm_head to the embeddings and some do not; "
                     f"the output stores lm_head (tie_word_embeddings: false)")
    if cname == "language":
        refuse_language_no_class_holds(ckpts, paths, comps, where)
        if in_family:
            comps = text_only_as_vlm(ckpts, comps, ref_key, where, cname, notes)
        else:
            comps = vlm_as_text_only(ckpts, comps, where, cname, notes)
        comps = fused_where_mixed(comps, where, cname, notes)
    comps = drop_partial_extras(comps, paths, where, cname, notes)
    out = SectionInputs(ckpts, paths, comps)
    if cname not in ("language", WHOLE):
        return out
    folders = {r: ckpts[r].side_files for r in refs}
    source = section.tokenizer.source if section.tokenizer is not None else section.tokenizer_source
    if source not in (None, "base", "union", *refs):  # a model outside the merge: its tokenizer only, as mergekit
        folders[source] = opener.path(source)
        opener.side_only.append(folders[source])  # an input too: no output may replace it
    if cname == WHOLE:
        vocabulary = {r: vocabulary_tensors(ckpts[r]) for r in refs}
        out.comps, out.tokenizer = plan_whole_tokenizer(section, refs, folders, comps, vocabulary, section.base_model,
                                                        where, notes)
        if out.tokenizer is not None and out.tokenizer.tokenizer is not None:
            out.vocab = out.comps[ref_key].tensors[vocabulary[ref_key][0]].shape[0]
        return out
    comps, out.kept, vlm_rows = fit_text_models(comps, paths, ref_key, where, cname, notes)
    out.comps, out.tokenizer = plan_tokenizer(section, refs, folders, comps, section.base_model, where, notes)
    if out.tokenizer is not None and out.tokenizer.tokenizer is not None:
        out.vocab = out.comps[ref_key].config["vocab_size"]
        out.extra_rows = vlm_rows
        return out
    out.comps, aligned, vocab = align_vocabularies(out.comps, ref_key, paths,
                                                   {r: ckpts[r].family is not None for r in refs}, where, notes)
    out.vocab = vocab if aligned else None
    out.extra_rows = {**vlm_rows, **aligned}
    return out


def refuse_language_no_class_holds(ckpts: dict[str, Checkpoint], paths: dict[str, str], comps: dict[str, Component],
                                   where: str) -> None:
    """A language model that no class of transformers holds alone (its family's config configures the decoder at the
    top level: IDEFICS, GIT) merges only with those of its own family; with any other (a text-only LM) one line
    says why, before the names are compared."""
    own = next((r for r, ck in ckpts.items() if ck.family is not None and not ck.family.language_alone), None)
    if own is None:
        return
    family = ckpts[own].family
    other = next((r for r, ck in ckpts.items() if ck.family is None or ck.family.model_type != family.model_type), None)
    if other is not None:
        raise ShapeMismatchError(
            f"{where}language: {paths[own]} ({family.model_type}) configures its decoder at the top level of its "
            f"config: transformers has no causal LM holding this language model alone, so it merges only with "
            f"{family.model_type} models, not with {paths[other]} ({comps[other].arch})")


def fused_where_mixed(comps: dict[str, Component], where: str, cname: str, notes: list[str]) -> dict[str, Component]:
    """Language models that hold their experts one tensor per expert (a VLM as transformers saves it: canonical
    names are file names) beside ones read fused (a text-only causal LM, `fused_experts.py`): all fused, as
    transformers holds them, so that they line up name by name; `comps` as they are when that does not help."""
    if len({frozenset(c.tensors) for c in comps.values()}) == 1:
        return comps
    fused = {r: in_memory_layout(c) for r, c in comps.items()}
    if len({frozenset(c.tensors) for c in fused.values()}) != 1:
        return comps
    notes.append(f"{where}{cname}: some inputs hold their experts one tensor per expert and some fused; they are "
                 "merged fused, as transformers holds them")
    return fused


def text_only_as_vlm(ckpts: dict[str, Checkpoint], comps: dict[str, Component], ref_key: str, where: str, cname: str,
                     notes: list[str]) -> dict[str, Component]:
    """Text-only LMs beside a VLM whose language model transformers saves under other names than theirs (Kimi-K2.5's
    `blocks.N`, MiniMax-M3-VL's experts one per expert), in an output of the VLM's family: each under the VLM's
    names (the reference's, else the first VLM's), through the names both hold in memory
    (adapters/language_pairing.py), so that the output is the VLM's own format; `comps` as they are when that does
    not make the names agree."""
    vlm = next((r for r in (ref_key, *comps) if ckpts[r].family is not None), None)
    if vlm is None:
        return comps
    names = set(comps[vlm].tensors)
    if all(set(c.tensors) == names for c in comps.values()):
        return comps
    paired = {r: as_vlm_language(ckpts[vlm], c) if set(c.tensors) != names and ckpts[r].family is None else c
              for r, c in comps.items()}
    if any(c is None or set(c.tensors) != names for c in paired.values()):
        return comps
    notes.append(f"{where}{cname}: the text-only models' tensors are named as {ckpts[vlm].family.cls} saves its "
                 "language model, through the names both classes hold in memory")
    return paired


def vlm_as_text_only(ckpts: dict[str, Checkpoint], comps: dict[str, Component], where: str, cname: str,
                     notes: list[str]) -> dict[str, Component]:
    """VLMs' language models written as their text-only class where transformers saves the VLM's under other names
    (Kimi-K2.5's `blocks.N`): each under the names the text-only class holds in memory, read back through the VLM
    class's own load-time conversion (adapters/language_pairing.py); others as they are."""
    out = dict(comps)
    for r, c in comps.items():
        if ckpts[r].family is None or not missing_from_class(c):
            continue
        loaded = as_text_only_language(ckpts[r], c)
        if loaded is not None and not missing_from_class(loaded):
            out[r] = loaded
            notes.append(f"{where}{cname}: {ckpts[r].path}'s language model is read under the names "
                         f"{c.arch} holds in memory, through {ckpts[r].family.cls}'s own conversion")
    return out
