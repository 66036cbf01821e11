"""Mllama's language model merged with text-only Llamas of its base.

Mllama's text model is a Llama with cross-attention layers inserted (`cross_attention_layers` in its text config)
and 8 embedding rows beyond its vocabulary (the image tokens). Text layer i is the i-th layer that is not a
cross-attention layer, so a text-only Llama's layers are renumbered to those; the cross-attention layers and the
extra embedding rows exist only in the VLM and come from it unmerged, as a LLaVA's image-token rows do.
"""

from __future__ import annotations

import dataclasses
import re

from ..checkpoint import Component, LazyTensor
from ..errors import ShapeMismatchError

TEXT_ARCH = "LlamaForCausalLM"
EMBED = "model.embed_tokens.weight"
LAYER = re.compile(r"^model\.layers\.(\d+)\.")
SHARED_CONFIG = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size")


def cross_attention_layers(component: Component) -> list[int]:
    layers = component.config.get("cross_attention_layers")
    return list(layers) if isinstance(layers, list) else []


def self_attention_layers(component: Component) -> list[int]:
    cross = set(cross_attention_layers(component))
    return [i for i in range(int(component.config["num_hidden_layers"])) if i not in cross]


def renumbered(text: Component, layers: list[int]) -> dict[str, LazyTensor]:
    """The text model's tensors with layer i named as the VLM's i-th self-attention layer."""
    def name(n: str) -> str:
        m = LAYER.match(n)
        return n if m is None else f"model.layers.{layers[int(m.group(1))]}.{n[m.end():]}"

    return {name(n): t for n, t in text.tensors.items()}


def check_text_model(vlm_path: str, vlm: Component, text_path: str, text: Component, cname: str) -> None:
    layers = self_attention_layers(vlm)
    if text.config.get("num_hidden_layers") != len(layers):
        raise ShapeMismatchError(f"{cname}: {text_path} has {text.config.get('num_hidden_layers')} layers but "
                                 f"{vlm_path}'s text model has {len(layers)} self-attention layers (beside its "
                                 f"cross-attention layers {cross_attention_layers(vlm)})")
    for key in SHARED_CONFIG:
        if text.config.get(key) != vlm.config.get(key):
            raise ShapeMismatchError(f"{cname}: {text_path} has {key} {text.config.get(key)} but {vlm_path}'s text "
                                     f"model {vlm.config.get(key)}")


def fit_text_models(comps: dict[str, Component], paths: dict[str, str], ref_key: str, where: str, cname: str,
                    notes: list[str]) -> tuple[dict[str, Component], dict[str, LazyTensor], dict[str, LazyTensor]]:
    """Text-only Llamas beside an Mllama language model: every input as a cross-attention model without the
    tensors only the VLM has. Returns the inputs, the VLM's own tensors (copied unmerged: the cross-attention
    layers) and its extra embedding rows (appended unmerged). Other inputs are returned as they are."""
    vlms = [r for r, c in comps.items() if cross_attention_layers(c)]
    texts = [r for r, c in comps.items() if c.arch == TEXT_ARCH]
    if not vlms or not texts or len(vlms) + len(texts) != len(comps):
        return comps, {}, {}
    donor_key = ref_key if ref_key in vlms else vlms[0]
    donor = comps[donor_key]
    layers = self_attention_layers(donor)
    for r in texts:
        check_text_model(paths[donor_key], donor, paths[r], comps[r], f"{where}{cname}")
    fitted = {r: dataclasses.replace(donor, tensors=renumbered(comps[r], layers)) for r in texts}
    text_names = set(next(iter(fitted.values())).tensors)
    kept = {n: t for n, t in donor.tensors.items() if n not in text_names}
    rows = int(donor.config["vocab_size"])
    extra = {}
    if EMBED in donor.tensors and donor.tensors[EMBED].shape[0] > rows:
        embed = donor.tensors[EMBED]
        extra[EMBED] = embed.derive(lambda x: x[rows:], (embed.shape[0] - rows, *embed.shape[1:]))
    for r in vlms:
        tensors = {n: t for n, t in comps[r].tensors.items() if n not in kept}
        if EMBED in extra:
            e = tensors[EMBED]
            tensors[EMBED] = e.derive(lambda x: x[:rows], (rows, *e.shape[1:]))
        fitted[r] = dataclasses.replace(comps[r], tensors=tensors)
    copied = f"cross-attention layers {cross_attention_layers(donor)}"
    if extra:
        copied += f" and embedding rows {rows}..{donor.tensors[EMBED].shape[0] - 1}"
    notes.append(f"{where}{cname}: the text-only {', '.join(paths[r] for r in texts)} merged into the self-attention "
                 f"layers {layers} of {paths[donor_key]}; its {copied} are copied from it unmerged")
    return {r: fitted[r] for r in comps}, kept, extra
