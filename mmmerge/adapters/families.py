"""The multimodal families mmmerge reads, as data: one row per transformers image-text-to-text family.

A row says, for the family's transformers class:
- `parts`: where each component lives in the class's in-memory state dict (the names transformers 5 uses in
  memory and peft uses for module names), as (component, memory prefix, canonical prefix). The longest
  matching prefix wins, so a projector inside the vision class (Qwen2-VL's `visual.merger`) is listed beside
  the vision prefix that holds it. Canonical names are the component class's own keys: the vision class's,
  the projector's, and the text-only `*ForCausalLM`'s (`model.*`, `lm_head.*`) for the language model;
- `layouts`: the key layouts that occur in files, each a list of (file prefix, memory prefix) renamings:
  `saved` is what transformers 5's `save_pretrained` writes, `hub` what the checkpoints published in the
  transformers 4 era hold. A layout whose renamings are empty is the in-memory layout itself (always tried);
- `outside`: tensors of the class that belong to no component, and why; they are kept and written back;
- `vision_arch` / `language_type`: where the vision class or the text-only language model type cannot be
  read from transformers' auto mappings (Qwen2-VL's vision class; Qwen-VL text models as `qwen2`/`qwen3`);
  `language_arch` names a language class outright when no text-only type fits (mllama's cross-attention LM);
- `text_config`: the config key of the language model's settings; TOP_LEVEL where the family's config is itself the
  decoder's (IDEFICS, GIT): then no class holds the language model alone, its names are the family class's own and
  `language_arch` is the family class.

Side files (tokenizer, processor, chat template, generation config) travel for every family: they are the
non-weight files of the folder, copied by `copy_side_files`.

Rows are derived from transformers (adapters/derive.py) for every image-text-to-text type whose class splits;
the few rows written here override the derivation where it is wrong, each saying why. A new transformers VLM
needs no row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Renames = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    model_type: str
    cls: str  # the transformers image-text-to-text class
    parts: tuple[tuple[str, str, str], ...]  # (component, memory prefix, canonical prefix)
    layouts: dict[str, Renames] = field(default_factory=dict)  # layout name -> (file prefix, memory prefix)
    outside: dict[str, str] = field(default_factory=dict)  # memory prefix -> why no component holds it
    vision_arch: str | None = None  # the vision class, where transformers' MODEL_MAPPING does not name it
    vision_module: str | None = None  # the transformers.models submodule that defines vision_arch
    language_type: str | None = None  # the text-only model_type whose *ForCausalLM holds the language model
    language_arch: str | None = None  # the language class, when no text-only model type fits
    language_fields: dict = field(default_factory=dict)  # set on the text-only config: what the family's text
    # class does without a field (Qwen3-VL-MoE's router always renormalises its top-k, Qwen3-MoE's by a field)
    text_config: str = "text_config"  # TOP_LEVEL: the family's config itself configures the decoder
    vision_config: str = "vision_config"
    not_in_llava: str | None = None  # why a LLaVA cannot hold this family's vision tower (stitch refuses it)

    def layout(self, name: str) -> Renames:
        return self.layouts.get(name, ())

    @property
    def has_projector(self) -> bool:
        """Something lies between the vision tower and the language model; not where the tower writes the language
        model's width itself (Inkling's last encoder layer), whose projector component holds no tensor."""
        return any(component == "projector" for component, _, _ in self.parts)

    @property
    def language_alone(self) -> bool:
        """Some class of transformers holds the language model without the vision tower."""
        return self.text_config != TOP_LEVEL


TOP_LEVEL = ""  # `text_config` of a family whose config configures the decoder at its top level


def text_config_of(family: Family, config: dict) -> dict:
    """The dict of a family's config.json that configures its language model (the config itself at TOP_LEVEL)."""
    return config if family.text_config == TOP_LEVEL else config[family.text_config]


# In memory (transformers 5): the usual wrapper of a vision tower, a projector and a decoder.
LANGUAGE = (("language", "model.language_model.", "model."), ("language", "lm_head.", "lm_head."))
WRAPPED = (("vision", "model.vision_tower.", ""), ("projector", "model.multi_modal_projector.", ""), *LANGUAGE)

# Files of that wrapper: transformers 5 saves the transformers 4 names; hub checkpoints of a CLIP or SigLIP
# tower also keep the tower's own `vision_model.` level.
_WRAPPED_REST = (("multi_modal_projector.", "model.multi_modal_projector."),
                 ("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                 ("image_newline", "model.image_newline"))
WRAPPED_SAVED = (("vision_tower.", "model.vision_tower."), *_WRAPPED_REST)
WRAPPED_HUB = (("vision_tower.vision_model.", "model.vision_tower."), *_WRAPPED_REST)
WRAPPED_LAYOUTS = {"saved": WRAPPED_SAVED, "hub": WRAPPED_HUB}

# Qwen-VL: the merger inside the vision class is the projector.
QWEN_VISUAL = (("projector", "model.visual.merger.", "merger."), ("vision", "model.visual.", ""), *LANGUAGE)

QWEN_TOWER = "takes flattened patches with their grid sizes, not images"

# Hand-written rows: only where the derivation from transformers (adapters/derive.py) is wrong or impossible; a
# row that the derivation reproduces is deleted (tests/test_derived_families.py checks that each still differs).
FAMILIES: dict[str, Family] = {f.model_type: f for f in [
    # Derivation cannot know that the VL-MoE router always renormalises its top-k weights (norm_topk_prob), which
    # the text-only Qwen3-MoE view of its language model must say (`mmmerge moe` writes these models).
    Family("qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration",
           (*QWEN_VISUAL, ("projector", "model.visual.deepstack_merger_list.", "deepstack_merger_list.")),
           language_type="qwen3_moe", language_fields={"norm_topk_prob": True}, not_in_llava=QWEN_TOWER),
    # Derivation cannot build the class: the default AyaVisionConfig's SigLIP tower (1152 wide, 14 heads) does not
    # build.
    Family("aya_vision", "AyaVisionForConditionalGeneration", WRAPPED, WRAPPED_LAYOUTS),
    # Derivation lets a LLaVA hold Pixtral: its forward takes `image_sizes` only as an option, but the tower is
    # trained on images of any size, which a fixed-size LLaVA processor cannot describe.
    Family("mistral3", "Mistral3ForConditionalGeneration", WRAPPED, {"saved": WRAPPED_SAVED},
           not_in_llava="takes images of any size with their sizes (Pixtral), which a fixed-size LLaVA processor "
                        "cannot describe"),
]}

# Vision classes transformers does not export at the top level, by the module that defines them (Qwen2-VL's
# tower): filled as rows are looked up, read by `hf_export.model_class`.
VISION_MODULES: dict[str, str] = {}


def family_named(model_type: str, config: dict | None = None) -> Family | None:
    """The row of an image-text-to-text model type: the hand-written one, else the one derived from transformers
    (from its default config, else from `config`); None when transformers lists no such type or its class does
    not split into vision, projector and language (`derive.why_not_split` says why)."""
    family = FAMILIES.get(model_type)
    if family is None:
        from .derive import NotDerivable, derive_family, is_image_text_to_text

        if not is_image_text_to_text(model_type):
            return None
        try:
            family = derive_family(model_type, config)
        except NotDerivable:
            return None
    if family.vision_arch and family.vision_module:
        VISION_MODULES[family.vision_arch] = family.vision_module
    return family


def family_of(config: dict | None) -> Family | None:
    """The row for a config.json, or None when it is no multimodal family mmmerge reads."""
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        return None
    return family_named(config["model_type"], config)


def split_name(family: Family, memory_name: str) -> tuple[str, str] | None:
    """(component, canonical name) of an in-memory tensor name, or None when no component holds it."""
    best = None
    for cname, prefix, canonical in family.parts:
        if memory_name.startswith(prefix) and (best is None or len(prefix) > len(best[1])):
            best = (cname, prefix, canonical)
    if best is None:
        return None
    cname, prefix, canonical = best
    return cname, canonical + memory_name[len(prefix):]


def join_name(family: Family, cname: str, canonical_name: str, *, owned: bool = True) -> str:
    """The in-memory name of a component's tensor (the inverse of `split_name`). With `owned=False` a name the
    component's class holds but another component owns (Qwen-VL's `merger` inside the vision class) is named
    too, under the component's prefix."""
    best = None
    for c, prefix, canonical in family.parts:
        if c == cname and canonical_name.startswith(canonical) and (best is None or len(canonical) > len(best[1])):
            best = (prefix, canonical)
    if best is None:
        raise KeyError(f"{family.model_type}: no {cname} prefix holds {canonical_name}")
    prefix, canonical = best
    name = prefix + canonical_name[len(canonical):]
    if owned and split_name(family, name) != (cname, canonical_name):  # another component's longer prefix claims it
        raise KeyError(f"{family.model_type}: {cname} tensor {canonical_name} has no name of its own")
    return name


def rename(name: str, renames: Renames, *, to_memory: bool) -> str:
    """A file name to its in-memory name (`to_memory`) or back, by the longest matching prefix."""
    pairs = renames if to_memory else tuple((m, f) for f, m in renames)
    best = max((p for p in pairs if name.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    return name if best is None else best[1] + name[len(best[0]):]
