"""Any other transformers checkpoint, read whole: one component holding every tensor under its file name.

The last resort of detection, for folders whose architecture mmmerge cannot split into vision, projector and
language (a multimodal family with no row in the family table, an encoder-decoder captioner, an action policy,
any other transformers model). Such a model still merges as mergekit merges any architecture: tensor by tensor,
with the same names, shapes and dtypes as the base, and the base's config and side files. `why_whole` says why
it has no components; `inspect` shows it. From the class built on the meta device, `memory_names` maps the file
names to transformers' in-memory ones (peft's module names, a built model's parameters) and `vocabulary_tensors`
names the tensors a tokenizer indexes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..checkpoint import Checkpoint, Component
from ..errors import MMMergeError
from ..io.folder import write_model_folder
from ..io.reader import read_folder
from .derive import why_not_split
from .families import family_of
from .hf_common import _kept_on_disk, auto_class_names, read_config, require_model_type

ITT = "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"
MULTIMODAL_LM = "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES"  # image-text-to-text and the audio-text models
FORMAT = "transformers-<model_type>-whole"  # e.g. transformers-idefics2-whole
DESCRIPTION = "any other transformers folder (config.json with a model_type transformers knows), merged whole"
COMPONENT = "model"  # the one component of a whole model


def detect(path: Path) -> bool:
    """A transformers folder no specific adapter took: its model_type is one transformers knows."""
    if not Path(path).is_dir():
        return False
    cfg = read_config(path)
    return (isinstance(cfg, dict) and "architecture" not in cfg and family_of(cfg) is None
            and cfg.get("model_type") in auto_class_names("CONFIG_MAPPING_NAMES"))


def has_vision_tower(cfg: dict | None) -> bool:
    """An image-text-to-text model with a vision tower config: a causal LM class of its type (gemma4's, llama4's)
    would take it for a language model only."""
    return (isinstance(cfg, dict) and isinstance(cfg.get("vision_config"), dict)
            and cfg.get("model_type") in auto_class_names(ITT))


def architecture(cfg: dict) -> str:
    """The class the folder was saved from, else the one transformers' auto mappings name for its type."""
    for arch in cfg.get("architectures") or []:
        if isinstance(arch, str):
            return arch
    model_type = cfg.get("model_type")
    for mapping in (ITT, MULTIMODAL_LM, "MODEL_MAPPING_NAMES"):
        found = auto_class_names(mapping).get(model_type)
        if found:
            return found
    return f"the {model_type} model"


def why_whole(cfg: dict) -> str:
    """One short, true reason why the model has no components."""
    model_type = cfg.get("model_type")
    arch = architecture(cfg)
    if model_type not in auto_class_names(ITT):
        if model_type in auto_class_names(MULTIMODAL_LM):  # Voxtral, Qwen2-Audio, the Qwen omni models whole
            return (f"{model_type}: a multimodal LM ({arch}) that transformers does not list as image-text-to-text, "
                    "so no vision/projector/language split is derived")
        return f"{model_type}: {arch} is no causal LM, vision encoder or multimodal family mmmerge splits"
    if any("action" in key for key in cfg):
        return f"{model_type}: an action policy ({arch}), not a vision tower + projector + language model"
    if cfg.get("is_encoder_decoder") or (isinstance(cfg.get("encoder"), dict) and isinstance(cfg.get("decoder"), dict)):
        return f"{model_type}: an encoder-decoder ({arch}); its decoder is no causal LM a language component holds"
    if not isinstance(cfg.get("vision_config"), dict):
        return f"{model_type}: no vision_config, so no vision tower to split off ({arch})"
    why = why_not_split(model_type, cfg)  # the derivation's own reason (its result is cached)
    return f"{model_type}: {why}" if why else f"{model_type}: no vision/projector/language split known for {arch}"


def memory_names(checkpoint: Checkpoint) -> dict[str, str]:
    """File name -> the name transformers gives the tensor in memory (peft's module names, a built model's
    parameters), by transformers' own renaming on load (transformers 5 renames some families' transformers 4
    names); names it converts (fuses, splits) or does not know keep their file name. Kept on disk per
    transformers version (`hf_common._kept_on_disk`)."""
    component = checkpoint.component(COMPONENT)
    config = json.dumps(component.config, sort_keys=True, default=str)
    return _memory_names(component.arch, config, tuple(sorted(component.tensors)))


@functools.lru_cache(maxsize=8)
def _memory_names(arch: str, config_json: str, names: tuple[str, ...]) -> dict[str, str]:
    def compute() -> dict:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        from .hf_export import class_on_meta

        model = class_on_meta(arch, config_json)
        renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
        held = model.state_dict()
        out = {}
        for name in names:
            renamed, _ = rename_source_key(name, renamings, [], model.base_model_prefix, held)
            out[name] = renamed if renamed in held else name
        return out

    try:
        return _kept_on_disk("memory-names", f"{arch}\n{config_json}\n" + "\n".join(names), compute)
    except MMMergeError:  # no class of that name in transformers: the files' names are all there is
        return {n: n for n in names}


def vocabulary_tensors(checkpoint: Checkpoint) -> tuple[str, ...]:
    """File names of the tensors indexed by token, as mergekit finds them in a model it has no definition of: the
    class's declared input embeddings (a token embedding) and an output head of as many rows."""
    component = checkpoint.component(COMPONENT)
    wanted = set(_vocabulary_names(component.arch, json.dumps(component.config, sort_keys=True, default=str)))
    return tuple(file for file, memory in memory_names(checkpoint).items() if memory in wanted)


@functools.lru_cache(maxsize=8)
def _vocabulary_names(arch: str, config_json: str) -> list[str]:
    def compute() -> dict:
        import torch

        from .hf_export import class_on_meta

        model = class_on_meta(arch, config_json)
        embeddings = model.get_input_embeddings()
        if not isinstance(embeddings, torch.nn.Embedding):  # a vision encoder's patch embedding is no vocabulary
            return {"names": []}
        params = {id(embeddings.weight)}
        head = model.get_output_embeddings()
        for p in (getattr(head, "weight", None), getattr(head, "bias", None)):
            if p is not None and p.shape[0] == embeddings.num_embeddings:
                params.add(id(p))
        return {"names": [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in params]}

    try:
        return _kept_on_disk("vocabulary", f"{arch}\n{config_json}", compute)["names"]
    except MMMergeError:
        return []


def read(path: Path) -> Checkpoint:
    path = Path(path)
    cfg = read_config(path)
    model_type = require_model_type(cfg, path)
    component = Component(COMPONENT, architecture(cfg), cfg, read_folder(path))
    return Checkpoint(path, f"transformers-{model_type}-whole", {COMPONENT: component},
                      source_config={"config.json": cfg}, side_files=path, whole=why_whole(cfg))


def write_source(checkpoint: Checkpoint, out: Path, force: bool = False) -> None:
    """The folder again: config, every tensor under its own name, side files."""
    write_model_folder(out, checkpoint.component(COMPONENT).tensors, checkpoint.source_config["config.json"],
                       force=force, side_files=checkpoint.path)
