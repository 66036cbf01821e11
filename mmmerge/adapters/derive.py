"""Family rows derived from transformers itself, so a VLM transformers ships is read the day it ships.

The family's image-text-to-text class is built on the meta device from its own config class (default values;
the checkpoint's config where the defaults do not build or split) and its modules say where each component lives:
- the language model is the submodule built from the text config (its class is the text type's base model
  class), plus the output embeddings;
- the vision tower is the submodule built from the vision config (where no model class is, the one plain module
  beside the language model whose shapes follow the vision config: Gemma 4 Unified's encoder-free `embed_vision`,
  `_plain_module_built_from_vision`); children of it whose last layer writes another width than the tower's own
  (what its largest child, its blocks, writes) are the projector (Qwen-VL's merger, Gemma 4 Unified's
  `multimodal_embedder`): they map out of the tower; where the default widths coincide and nothing else lies
  between, a child whose width does not follow the blocks' when a width of the vision config changes is (Qwen2.5-VL's
  merger);
- the projector is what else the common parent of both holds (merger, connector, resampler, Q-Former);
  other towers (audio, a VQ image generator) built from their own configs, and the embedders of sound inputs into
  the language model (Gemma 4's `embed_audio`), are kept outside, with the reason;
- where the config has no text config and configures the decoder at its top level (IDEFICS, GIT), the projector is
  what beside the tower reads its width and the language model every other child there, plus the head
  (`_derive_top_level`).
The file layouts are transformers' own: `saved` is the file prefix its save path writes each part under (canonical
names are file names, so converters and renamings inside a part, such as experts held fused and written one per
expert, leave the split as it is; a part written under several file prefixes, or at the top level beside other
parts, is split into its children until each reads back), `hub` adds the legacy prefixes its load-time mapping
removes (a CLIP tower's `vision_model.`). The text-only
counterpart is the causal LM whose base model holds exactly the language model's tensors.

A derived row is kept on disk per transformers version (`hf_common._kept_on_disk`): deriving imports torch and
the class (seconds), reading it back does not.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json

from ..errors import UnsupportedArchitectureError
from .families import TOP_LEVEL, Family, rename
from .hf_common import _kept_on_disk, auto_class_names

ITT = "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"
KIND = "family-22"  # the on-disk cache kind: a new name whenever the derivation changes what it derives


class NotDerivable(UnsupportedArchitectureError):
    """transformers lists the type, but its class does not split into vision, projector and language."""


def is_image_text_to_text(model_type: str) -> bool:
    return model_type in auto_class_names(ITT)


def why_not_split(model_type: str, config: dict | None = None) -> str | None:
    """Why the type's class does not split into components (None: it does)."""
    try:
        derive_family(model_type, config)
    except NotDerivable as e:
        return str(e)
    return None


def derive_family(model_type: str, config: dict | None = None) -> Family:
    """The family row of `model_type`, derived from its transformers class (built from the default config,
    else from `config`, a config.json dict). Raises NotDerivable with the reason where the class does not split."""
    try:
        return _derived(model_type, None)
    except NotDerivable:
        if config is None:
            raise
        return _derived(model_type, json.dumps(config, sort_keys=True, default=str))


@functools.lru_cache(maxsize=256)
def _derived(model_type: str, config_json: str | None) -> Family:
    key = model_type if config_json is None else f"{model_type}\n{config_json}"
    data = _kept_on_disk(KIND, key, lambda: _derive_or_reason(model_type, config_json))
    if "why" in data:
        raise NotDerivable(data["why"])
    return family_from_json(data["family"])


def _derive_or_reason(model_type: str, config_json: str | None) -> dict:
    try:
        return {"family": family_to_json(_derive(model_type, config_json))}
    except NotDerivable as e:
        return {"why": str(e)}
    except Exception as e:  # noqa: BLE001  (transformers' classes fail in their own ways: a reason, not a crash)
        return {"why": f"deriving its row failed ({_one_line(e)})"}


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"


def family_to_json(family: Family) -> dict:
    return dataclasses.asdict(family)


def family_from_json(data: dict) -> Family:
    data = dict(data)
    data["parts"] = tuple(tuple(p) for p in data["parts"])
    data["layouts"] = {k: tuple(tuple(r) for r in v) for k, v in data["layouts"].items()}
    return Family(**data)


# ---- the derivation (imports torch and transformers) ---------------------------------------------------------------

def _derive(model_type: str, config_json: str | None) -> Family:
    cls_name, text, vision, model = _build_on_meta(model_type, config_json)
    if text is None:
        return _derive_top_level(model_type, cls_name, vision, model)
    modules = dict(model.named_modules())
    language, tower = _built_from(modules, text), _built_from(modules, vision)
    if language is not None and tower is None:
        tower = _plain_module_built_from_vision(model, language)
    if language is None or tower is None:
        which, config = ("language model", "text") if language is None else ("vision tower", "vision")
        raise NotDerivable(f"{cls_name} holds no {which} built from its {config} config")
    if tower.startswith(language + ".") or language.startswith(tower + "."):
        raise NotDerivable(f"{cls_name} nests its vision tower and language model ({tower}, {language})")
    head = _head(model, modules, language)
    sharing = _shared_with_outside(model, [tower, language] + ([head] if head else []), language)
    if sharing:
        raise NotDerivable(f"{cls_name}'s language model ({language}) shares its weights with {sharing}, outside "
                           "every component, under whose names its files hold them")
    names = dict(model.state_dict())
    counterpart = _text_only_counterpart(text, {n[len(language) + 1:]: tuple(t.shape) for n, t in names.items()
                                               if n.startswith(language + ".")})
    mapped_out = _writing_other_width(modules[tower])
    projector, outside = _projector_and_outside(model, modules, names, tower, language, head, vision.model_type,
                                                mapped_out)
    if not projector:  # the default widths may coincide (Qwen2.5-VL's merger writes 3584, as its blocks do)
        mapped_out = _apart_from_blocks(model, tower, vision)
        projector, outside = _projector_and_outside(model, modules, names, tower, language, head, vision.model_type,
                                                    mapped_out)
    if all(any(n.startswith(p) for _, p, _ in projector) for n in names if n.startswith(tower + ".")):
        raise NotDerivable(f"every part of {cls_name}'s vision tower writes another width than its blocks: "
                           "the tower cannot be told from a projector")
    if not projector and not _writes_the_language_width(model.config, text, modules[tower]):
        raise NotDerivable(f"{cls_name} holds nothing between its vision tower and its language model")
    lm_canonical = counterpart[2] if counterpart else ""
    parts = [*projector, ("vision", tower + ".", ""), ("language", language + ".", lm_canonical)]
    if head is not None:
        parts.append(("language", head + ".", "lm_head."))
    language_type, language_arch = _language_fields(counterpart, text.model_type, type(modules[language]).__name__)
    family = Family(model_type, cls_name, tuple(parts), {}, outside, *_vision_fields(type(modules[tower]), vision),
                    language_type, language_arch, not_in_llava=_not_in_llava(modules[tower], vision))
    return _with_layouts(model, family, names)


def _shared_with_outside(model, claimed: list[str], language: str) -> str | None:
    """The module outside `claimed` (tower, language model, head) that most of the language model's parameters are
    tied to, or None: Diffusion Gemma's text encoder is its decoder's weights, which transformers writes once, under
    the decoder's names (a language component would read almost nothing)."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    inside = tuple(c + "." for c in claimed)
    mine = [names for names in owners.values() if any(n.startswith(language + ".") for n in names)]
    tied = [next(n for n in names if not n.startswith(inside)) for names in mine
            if not all(n.startswith(inside) for n in names)]
    if not mine or 2 * len(tied) <= len(mine):
        return None
    return ".".join(min(tied, key=len).split(".")[:2])


def _head(model, modules: dict, language: str) -> str | None:
    """The output embeddings' module: the class's own, else those of the causal LM that holds the language model
    (Nemotron-H-Omni keeps its head at `language_model.lm_head`, beside `language_model.model`, and exposes none)."""
    for owner in (model, modules.get(language.rpartition(".")[0])):
        found = owner.get_output_embeddings() if hasattr(owner, "get_output_embeddings") else None
        if found is not None:
            return next((n for n, m in modules.items() if m is found), None)
    return None


def _build_on_meta(model_type: str, config_json: str | None):
    """(class name, text config (None where the config itself configures the decoder), vision config, the class
    built on the meta device) of the type."""
    import torch
    import transformers

    cls_name = auto_class_names(ITT).get(model_type)
    if cls_name is None:
        raise NotDerivable(f"model_type {model_type} is no image-text-to-text type of transformers")
    klass = getattr(transformers, cls_name)
    source = "its config" if config_json else "default values"
    try:
        if config_json is None:
            config = transformers.AutoConfig.for_model(model_type, **DERIVED_WITH.get(model_type, ({}, ""))[0])
        else:
            given = json.loads(config_json)
            config = klass.config_class.from_dict({k: v for k, v in given.items() if k != "architectures"})
    except Exception as e:  # noqa: BLE001  (configs fail to build in many ways)
        raise NotDerivable(f"its config class does not build from {source} ({_one_line(e)})") from e
    text, vision = getattr(config, "text_config", None), getattr(config, "vision_config", None)
    top_level = (text is None and vision is not None and type(getattr(config, "vocab_size", None)) is int
                 and _no_language_apart(model_type, cls_name))
    if (text is None and not top_level) or vision is None:
        missing = " and ".join(k for k, v in (("text_config", text), ("vision_config", vision)) if v is None)
        raise NotDerivable(f"{type(config).__name__} has no {missing}: no vision tower and language model to split")
    try:
        with torch.device("meta"):
            model = klass._from_config(config)
    except Exception as e:  # noqa: BLE001  (default configs that do not build fail in many ways)
        raise NotDerivable(f"its class does not build from {source} ({_one_line(e)})") from e
    return cls_name, text, vision, model


def _no_language_apart(model_type: str, cls_name: str) -> bool:
    """A class whose config is itself the decoder's (no text config: IDEFICS, GIT) builds its decoder inside its base
    model beside the vision tower, unless transformers maps the type to a causal LM other than the VLM itself."""
    return auto_class_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES").get(model_type) in (None, cls_name)


# Config fields set before deriving a type's row from its default config, and why (a row names only the modules
# the class builds from the config it is derived from).
DERIVED_WITH = {
    "idefics": ({"use_resampler": True}, "IDEFICS checkpoints (idefics-9b, idefics-80b) resample the image features "
                "with a perceiver, which the default config leaves out: without it the row would keep the "
                "perceiver outside every component"),
}


def _derive_top_level(model_type: str, cls_name: str, vision, model) -> Family:
    """The row of a class whose config configures the decoder at its top level (IDEFICS, GIT): the vision tower is
    the module built from the vision config; the projector is what else its parent holds that reads the tower's
    width (`_reading_the_tower`: GIT's visual projection; IDEFICS' perceiver resampler and its gated cross-attention
    layers, which read the image features inside the decoder stack: the Flamingo connector, trained while IDEFICS
    freezes its text layers (`freeze_text_layers`), and absent from the LLaMA its decoder starts from); the language
    model is every other child of that parent, plus the head, under the class's own names: no class of transformers
    holds it alone, so `language_arch` is the class itself and a merge with a text-only LM is refused."""
    modules = dict(model.named_modules())
    tower = _built_from(modules, vision, of_any_class=True)
    if tower is None:
        raise NotDerivable(f"{cls_name} holds no vision tower built from its vision config")
    parent = tower.rpartition(".")[0]
    under = parent + "." if parent else ""
    head = _head(model, modules, tower)
    reading = _reading_the_tower(model, modules, parent, tower)
    names = dict(model.state_dict())
    sizes: dict[str, int] = {}  # part prefix -> parameter count
    outside: dict[str, str] = {}
    for name, tensor in names.items():
        if name.startswith(tower + ".") or (head and name.startswith(head + ".")):
            continue
        if not name.startswith(under):
            outside[name.split(".")[0] + ("." if "." in name else "")] = (
                f"held by {cls_name} outside the model that holds its vision tower and language model")
            continue
        rest = name[len(under):]
        prefix = under + rest.split(".")[0] + ("." if "." in rest else "")
        sizes[prefix] = sizes.get(prefix, 0) + tensor.numel()
    projector = sorted((p for p in sizes if p[len(under):].rstrip(".") in reading), key=lambda p: (-sizes[p], p))
    if not projector:
        raise NotDerivable(f"{cls_name} holds nothing beside its vision tower that reads the tower's width")
    parts = [("projector", p, p[len(under):] if i else "") for i, p in enumerate(projector)]
    parts += [("vision", tower + ".", ""), *(("language", p, p) for p in sorted(sizes) if p not in projector)]
    if head is not None:
        parts.append(("language", head + ".", head + "."))
    family = Family(model_type, cls_name, tuple(parts), {}, outside, *_vision_fields(type(modules[tower]), vision),
                    None, cls_name, text_config=TOP_LEVEL, not_in_llava=_not_in_llava(modules[tower], vision))
    return _with_layouts(model, family, names)


def _reading_the_tower(model, modules: dict, parent: str, tower: str) -> set[str]:
    """The children of `parent` beside the tower whose tensors change shape when the vision config's width (each of
    its integer fields equal to the tower's width) is doubled and the class built again on the meta device: they
    read the tower's output."""
    import copy

    import torch

    def shapes(m) -> dict:
        under = m.get_submodule(parent) if parent else m
        return {c: [tuple(t.shape) for t in sub.state_dict().values()] for c, sub in under.named_children()
                if sub is not under.get_submodule(tower.rpartition(".")[2])}

    width, before, out = _tower_width(modules[tower]), shapes(model), set()
    for key, value in model.config.vision_config.to_dict().items():
        if type(value) is not int or value != width:
            continue
        changed = copy.deepcopy(model.config)
        try:
            setattr(changed.vision_config, key, 2 * value)
            with torch.device("meta"):
                after = shapes(type(model)._from_config(changed))
        except Exception:  # noqa: BLE001  (a field that cannot change alone tells nothing)
            continue
        out |= {c for c in before if after.get(c) != before[c]}
    return out


def _vision_fields(tower_cls: type, vision) -> tuple[str | None, str | None]:
    """(vision_arch, vision_module): the tower's class where MODEL_MAPPING names another for the vision type, and
    its transformers.models module where transformers does not export it."""
    import transformers

    if auto_class_names("MODEL_MAPPING_NAMES").get(vision.model_type) == tower_cls.__name__:
        return None, None
    exported = getattr(transformers, tower_cls.__name__, None) is tower_cls
    return tower_cls.__name__, None if exported else tower_cls.__module__.split(".")[-2]


def _language_fields(counterpart, text_type: str, base_cls: str) -> tuple[str | None, str | None]:
    """(language_type, language_arch): the text-only type where it is not the text config's own, or the class:
    the causal LM whose config class is the text config's (mllama), else the base model when no counterpart fits."""
    if counterpart is None:
        return None, base_cls
    causal_type, config_type, _ = counterpart
    if causal_type == text_type:
        return None, None
    if config_type == text_type:
        return None, auto_class_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES")[causal_type]
    return causal_type, None


def _built_from(modules: dict, sub_config, *, of_any_class: bool = False) -> str | None:
    """The outermost submodule built from `sub_config`: of the type's base model class, else of its model type
    (`of_any_class`: a module that is no PreTrainedModel too, IDEFICS' vision transformer)."""
    from torch import nn
    from transformers import PreTrainedModel

    base = auto_class_names("MODEL_MAPPING_NAMES").get(sub_config.model_type)
    kind = nn.Module if of_any_class else PreTrainedModel
    for test in (lambda m: type(m).__name__ == base,
                 lambda m: getattr(getattr(m, "config", None), "model_type", None) == sub_config.model_type):
        found = [n for n, m in modules.items() if n and isinstance(m, kind) and test(m)]
        if found:
            return min(found, key=lambda n: (n.count("."), n))
    return None


def _candidate_types(text_type: str) -> list[str]:
    """Text-only model types the text config's type may be a variant of, nearest first: itself, its name with
    parts left out (qwen3_vl_moe_text -> qwen3_moe), its prefixes (glm4v_text -> glm4)."""
    tokens = text_type.split("_")
    out = [text_type]
    for k in range(len(tokens) - 1, 0, -1):
        out += ["_".join(c) for c in itertools.combinations(tokens, k)]
    out += [text_type[:i] for i in range(len(text_type) - 1, 2, -1)]
    return list(dict.fromkeys(out))


def _text_only_counterpart(text, language_shapes: dict) -> tuple[str, str, str] | None:
    """(causal LM model type, its config's model type, its base model prefix + ".") of the text-only class whose
    base model holds exactly the language model's tensors, or None."""
    from transformers import PreTrainedModel

    from ..checkpoint import Component
    from .hf_export import memory_layout, meta_model, model_class

    causal = auto_class_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES")
    for candidate in _candidate_types(text.model_type):
        if candidate not in causal:
            continue
        try:
            own = getattr(model_class(causal[candidate]).config_class, "model_type", None) == text.model_type
            model = meta_model(Component("language", causal[candidate],
                                         {**text.to_dict(), "model_type": text.model_type if own else candidate}, {}))
        except Exception:  # noqa: BLE001  (a candidate that does not build from this config is no counterpart)
            continue
        prefix = next(n for n, m in model.named_modules() if n and isinstance(m, PreTrainedModel)) + "."
        required, optional = memory_layout(model)
        shapes = {n[len(prefix):]: s for n, s in {**required, **optional}.items() if n.startswith(prefix)}
        if shapes == language_shapes:
            return candidate, model.config.model_type, prefix
    return None


def _widths(module) -> list:
    """The widths the linear and convolution layers of `module` write, in module order."""
    return [getattr(m, "out_features", getattr(m, "out_channels", None)) for m in module.modules()
            if hasattr(m, "out_features") or hasattr(m, "out_channels")]


def _tower_width(tower) -> int | None:
    """The width the tower itself writes: what the last layer of its largest child (its blocks) writes, not its first
    layer's, which may be a merger registered before the blocks (Qwen3-Omni's `merger_list`)."""
    children = [m for _, m in tower.named_children() if _widths(m)]
    if not children:
        return None
    largest = max(children, key=lambda m: sum(p.numel() for p in m.parameters()))
    return _widths(largest)[-1]


def _writes_the_language_width(config, text, tower) -> bool:
    """The tower itself writes the language model's width (Inkling's last encoder layer: nothing lies between, the
    projector is empty): it writes the text config's `hidden_size`, and, the config built again with that width
    doubled (so that ties the config makes, `vision_config.text_hidden_size`, follow), the tower built again on the
    meta device writes the doubled width. A width that only coincides (BLIP's 768 both sides) does not follow."""
    import torch

    width = getattr(text, "hidden_size", None)
    if type(width) is not int or _tower_width(tower) != width:
        return False
    data = config.to_dict()
    key = next((k for k, v in data.items() if isinstance(v, dict) and v.get("model_type") == text.model_type), None)
    if key is None:
        return False
    data[key] = {**data[key], "hidden_size": 2 * width}
    try:
        changed = type(config).from_dict(data)
        vision = next(v for v in vars(changed).values() if type(v) is type(tower.config))
        with torch.device("meta"):
            return _tower_width(type(tower)._from_config(vision)) == 2 * width
    except Exception:  # noqa: BLE001  (a config that does not build again with another width tells nothing)
        return False


def _writes_other_width(module, width: int | None) -> bool:
    """The last linear or convolution layer of `module` writes other than `width` features (the tower's own)."""
    widths = _widths(module)
    return bool(widths) and widths[-1] != width


def _writing_other_width(tower) -> set[str]:
    """The tower's children whose last layer writes another width than the tower's own."""
    width = _tower_width(tower)
    return {child for child, module in tower.named_children() if _writes_other_width(module, width)}


def _apart_from_blocks(model, tower_name: str, vision) -> set[str]:
    """The tower's children whose width does not follow its blocks' (its largest child's) when a width of the
    vision config is changed: each integer field equal to the tower's width is doubled in turn and the tower built
    again on the meta device (`_tower_built_again`); a child whose last layer's width moves while the blocks' stays,
    or stays while theirs moves, writes a width set apart from the tower's (Qwen2.5-VL's merger: `out_hidden_size`,
    the language model's width, equal to the tower's `hidden_size` by default; Gemma 4 Unified's
    `multimodal_embedder`, which writes the text width, equal to its `mm_embed_dim` in a tiny config)."""
    tower = model.get_submodule(tower_name)
    width = _tower_width(tower)
    children = {c: m for c, m in tower.named_children() if _widths(m)}
    largest = max(children, key=lambda c: sum(p.numel() for p in children[c].parameters()), default=None)
    apart: set[str] = set()
    for key, value in vision.to_dict().items():
        if largest is None or type(value) is not int or value != width:
            continue
        probe = _tower_built_again(model, tower_name, vision, key, 2 * value)
        if probe is None:  # a field that cannot change alone tells nothing
            continue
        again = dict(probe.named_children())

        def moved(c):
            return _widths(again[c])[-1:] != _widths(children[c])[-1:]

        apart |= {c for c in children if c in again and moved(c) != moved(largest)}
    return apart


def _tower_built_again(model, tower_name: str, vision, key: str, value):
    """The tower built again on the meta device with one field of the vision config set to `value`, None where that
    does not build: a model class from the changed vision config alone; a plain module (Gemma 4 Unified's
    `embed_vision`, built from the vision and the text config) as the submodule of the whole class built again."""
    import copy

    import torch
    from transformers import PreTrainedModel

    tower = model.get_submodule(tower_name)
    try:
        with torch.device("meta"):
            if isinstance(tower, PreTrainedModel):
                changed = copy.deepcopy(vision)
                setattr(changed, key, value)
                return type(tower)._from_config(changed)
            return _built_again(model, key, value).get_submodule(tower_name)
    except Exception:  # noqa: BLE001  (a field that cannot change alone tells nothing)
        return None


def _built_again(model, key: str, value):
    """The class built again (on the current device) with one field of its vision config set to `value`."""
    import copy

    changed = copy.deepcopy(model.config)
    setattr(changed.vision_config, key, value)
    return type(model)._from_config(changed)


def _plain_module_built_from_vision(model, language: str) -> str | None:
    """Where no model class is built from the vision config, the plain module beside the language model that is:
    the one child of the language model's parent, no model class of transformers, whose tensors change shape when an
    integer field of the vision config is doubled and the class built again on the meta device (Gemma 4 Unified's
    encoder-free `embed_vision`, which transformers builds from the vision and the text config and gives no config
    of its own). None where no child, or more than one, follows the vision config."""
    import torch
    from transformers import PreTrainedModel

    parent = language.rpartition(".")[0]

    def shapes(m) -> dict:
        under = m.get_submodule(parent) if parent else m
        return {c: [tuple(t.shape) for t in sub.state_dict().values()] for c, sub in under.named_children()
                if not isinstance(sub, PreTrainedModel)}

    before, moved = shapes(model), set()
    for key, value in model.config.vision_config.to_dict().items():
        if type(value) is not int or not value:
            continue
        try:
            with torch.device("meta"):
                after = shapes(_built_again(model, key, 2 * value))
        except Exception:  # noqa: BLE001  (a field that cannot change alone tells nothing)
            continue
        moved |= {c for c in before if after.get(c) != before[c]}
    if len(moved) != 1:
        return None
    return f"{parent}.{moved.pop()}" if parent else moved.pop()


def _projector_and_outside(model, modules: dict, names: dict, tower: str, language: str, head: str | None,
                           vision_type: str, mapped_out: set[str]) -> tuple[list, dict]:
    """Projector parts (component, memory prefix, canonical prefix), largest first, and the tensors kept
    outside every component, by memory prefix, with the reason. `mapped_out` names the tower's children that map
    out of it (its merger)."""
    groups: dict[str, int] = {}  # memory prefix -> parameter count
    inside = {f"{tower}.{child}." for child in mapped_out}
    shared = []
    for p, q in zip(tower.split("."), language.split(".")):
        if p != q:
            break
        shared.append(p)
    parent = ".".join(shared)
    claimed = [tower + ".", language + "."] + ([head + "."] if head else [])
    outside: dict[str, str] = {}
    for name, tensor in names.items():
        inner = next((p for p in inside if name.startswith(p)), None)
        if inner is not None:
            groups[inner] = groups.get(inner, 0) + tensor.numel()
            continue
        if any(name.startswith(p) for p in claimed):
            continue
        rest = name if not parent else name[len(parent) + 1:] if name.startswith(parent + ".") else None
        if rest is None:
            top = name.split(".")[0]
            outside[top + ("." if "." in name else "")] = (f"held by {type(model).__name__} outside the model that "
                                                           "holds its vision tower and language model")
            continue
        child = rest.split(".")[0]
        path = f"{parent}.{child}" if parent else child
        prefix = path + ("." if "." in rest else "")
        why = _another_tower(modules.get(path), vision_type) or _another_inputs_embedder(modules.get(path), child)
        if why:
            outside[prefix] = why
            continue
        groups[prefix] = groups.get(prefix, 0) + tensor.numel()
    order = sorted(groups, key=lambda p: (-groups[p], p))
    main = next((p for p in order if p not in inside and p.endswith(".")), None)
    parts = []
    for p in ([main] if main else []) + [p for p in order if p != main]:
        if p == main:
            canonical = ""
        elif p in inside:
            canonical = p[len(tower) + 1:]
        else:
            canonical = p[len(parent) + 1:] if parent else p
        parts.append(("projector", p, canonical))
    return parts, outside


OTHER_INPUTS = ("audio", "speech", "wav", "vq")  # towers of inputs other than images, or image generators


def _another_tower(module, vision_type: str) -> str | None:
    """Why a submodel beside the vision tower and the language model is no projector: another tower built from the
    vision config (Video-LLaVA's video tower), or a tower of another input (audio) or a VQ image generator. Other
    submodels there (a Q-Former, an adapter) sit between the two and are the projector."""
    from transformers import PreTrainedModel

    if not isinstance(module, PreTrainedModel):
        return None
    kind = module.config.model_type
    if kind == vision_type:
        return f"a second {type(module).__name__} built from the vision config, beside the vision tower"
    if any(w in f"{type(module).__name__} {kind}".lower() for w in OTHER_INPUTS):
        return f"{type(module).__name__} ({kind}): a tower of another input, neither vision tower nor language model"
    return None


SOUND_INPUTS = ("audio", "speech")  # inputs whose embedders sit beside the image projector (Gemma 3n's, Gemma 4's)


def _another_inputs_embedder(module, child: str) -> str | None:
    """Why a module beside the vision tower and the language model, named for a sound input (Gemma 3n's and Gemma
    4's `embed_audio`, which maps the audio tower's output into the language model), is no image projector."""
    if module is None or not any(w in child.lower() for w in SOUND_INPUTS):
        return None
    return f"{type(module).__name__} ({child}): maps another input than images into the language model"


# What a tower's forward needs besides pixel values, in words (an argument not listed here is named as it is).
INPUTS_IN_WORDS = {"grid_thw": "flattened patches with their grid sizes", "aspect_ratio_ids": "image tiles with their "
                   "aspect ratios", "image_sizes": "images of any size with their sizes",
                   "target_sizes": "images of any size with their sizes"}
# Needed even where the signature gives them a default of None: PaddleOCR-VL's and MiniCPM-V's towers fail without
# them (Pixtral's `image_sizes` is truly optional: a tower runs on square images without it).
NEEDED_THOUGH_DEFAULTED = ("grid_thw", "target_sizes")


def _not_in_llava(tower, vision) -> str | None:
    """Why a LLaVA cannot hold the tower: its forward needs more than the pixel values a LLaVA passes, it has no
    forward (Apertus 1.5's VQ image tokenizer encodes through other methods), it records no hidden states, or its
    first layer takes something other than images (`_first_layer_on_images`)."""
    import inspect

    import torch
    from transformers import PreTrainedModel

    if type(tower).forward is torch.nn.Module.forward:
        return "has no forward of its own (it encodes through other methods), not one on images"
    if not isinstance(tower, PreTrainedModel):  # IDEFICS' vision transformer, a plain module
        return ("returns no hidden states per layer (it is no transformers model class), from which a LLaVA selects "
                "its image features")
    params = [p for p in inspect.signature(tower.forward).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    needed = [p.name for p in params if p.name != "pixel_values"
              and (p.default is p.empty or p.name.endswith(NEEDED_THOUGH_DEFAULTED))]
    if params and params[0].name != "pixel_values" and params[0].name not in needed:
        needed.insert(0, params[0].name)
    if not needed:
        return _first_layer_on_images(tower, vision)
    words = [next((w for k, w in INPUTS_IN_WORDS.items() if n.endswith(k)), None) for n in needed]
    said = [w for w in dict.fromkeys(words) if w] or needed
    return f"takes {', '.join(said)}, not images"


class _Reached(Exception):
    """The tower's forward reached its first layer: nothing after it is run."""


def _first_layer_on_images(tower, vision) -> str | None:
    """Why the tower's first layer cannot take a batch of images, as a LLaVA passes them: its forward is run on the
    meta device until its first linear or convolution layer (no arithmetic), whose input is looked at. Molmo2's and
    Inkling's towers apply a linear layer of patch_size² x channels inputs to the pixel values as they come (their
    processors cut the patches); Llama 4's and RADIO's cut them in the forward first, and take images. None where
    the forward fails before that layer (a value it reads from the data, which the meta device has not): no reason
    found, none given."""
    import torch

    size = getattr(vision, "image_size", None)
    size = size if type(size) is int else 224
    channels = getattr(vision, "num_channels", 3)
    channels = channels if type(channels) is int else 3
    seen: list = []

    def reached(module, args):
        seen.append((module, args[0] if args and isinstance(args[0], torch.Tensor) else None))
        raise _Reached

    layers = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    hooks = [m.register_forward_pre_hook(reached) for m in tower.modules() if isinstance(m, layers)]
    try:
        with torch.no_grad():
            tower(torch.zeros(1, channels, size, size, device="meta"))
    except _Reached:
        pass
    except Exception:  # noqa: BLE001  (a forward that needs real values stops before its first layer)
        return None
    finally:
        for h in hooks:
            h.remove()
    if not seen or seen[0][1] is None:
        return None
    layer, x = seen[0]
    takes = layer.in_features if isinstance(layer, torch.nn.Linear) else layer.in_channels
    given = x.shape[-1] if isinstance(layer, torch.nn.Linear) else (x.shape[1] if x.dim() > 1 else None)
    if given == takes:
        return None
    return f"takes pre-cut patches of {takes} values each, not images (its first layer is a {type(layer).__name__})"


def _with_layouts(model, family: Family, names: dict) -> Family:
    """The row with its layouts (`_layouts`). Where they do not read back, a part whose tensors transformers writes
    under several file prefixes (Kimi-K2.5's projector: `mm_projector.proj.0` beside `model.mm_projector.pre_norm`;
    its tower's `pos_emb` outside `vision_tower.encoder.`), or whose file prefix claims names written for another
    part (a language model written at the top level beside the vision tower, Mistral-Large-4's), is split into its
    children, each a part of the same component with its own file prefix, level by level down to single tensors."""
    names = _one_per_block_kind(names)
    while True:
        try:
            return dataclasses.replace(family, layouts=_layouts(model, family, names))
        except NotDerivable as why:
            split = _split_where_misread(model, family, names)
            if split == family:
                raise why from None
            family = split


def _split_where_misread(model, family: Family, names: dict) -> Family:
    """The row with each part (or prefix kept outside) that has no one file prefix, or whose file prefix claims file
    names written for another part, followed by its children (a part left holding no tensor of its own writes
    nothing and needs no renaming)."""
    prefixes = sorted({p for _, p, _ in family.parts} | set(family.outside), key=lambda p: (-len(p), p))
    written = {p: files for p, files in _written_per_part(model, names, prefixes).items() if files}
    heads = {p: h for p, h in ((p, _one_file_prefix(p, files)) for p, files in written.items()) if h is not None}
    pairs = tuple((h, p) for p, h in heads.items() if h != p)
    longest_first = sorted(written, key=len, reverse=True)
    to_split = set(written) - set(heads)
    for prefix, files in written.items():
        for file_name, memory_name in files.items():
            if prefix in heads and not _reads_back(pairs, longest_first, heads[prefix], prefix, file_name,
                                                   memory_name):
                claimed = max((p for h, p in pairs if file_name.startswith(h)), key=lambda p: len(heads[p]),
                              default=prefix)
                to_split.add(claimed)
    parts = []
    for component, prefix, canonical in family.parts:
        parts.append((component, prefix, canonical))
        if prefix in to_split:
            parts += [(component, prefix + c, canonical + c) for c in _children(prefix, prefixes, names)]
    outside = dict(family.outside)
    for prefix, why in family.outside.items():
        if prefix in to_split:
            outside.update((prefix + c, why) for c in _children(prefix, prefixes, names))
    return dataclasses.replace(family, parts=tuple(parts), outside=outside)


def _children(prefix: str, prefixes: list[str], names: dict) -> list[str]:
    """The next name level under a part prefix, over the names no longer prefix holds; none for a single tensor
    or for block indices (only the first block of each kind is named: `_one_per_block_kind`)."""
    if not prefix.endswith("."):
        return []
    mine = [n[len(prefix):] for n in names
            if n.startswith(prefix) and next(p for p in prefixes if n.startswith(p)) == prefix]
    children = sorted({t.split(".")[0] + ("." if "." in t else "") for t in mine})
    return [] if any(c.rstrip(".").isdigit() for c in children) else children


def _one_file_prefix(prefix: str, files: dict) -> str | None:
    try:
        return _file_prefix(prefix, files)
    except NotDerivable:
        return None


def _layouts(model, family: Family, names: dict) -> dict:
    """`saved`: the file prefix transformers' save path writes each part under, per part prefix; `hub`: those plus
    the legacy prefixes its load-time mapping removes from submodels (a CLIP tower's `vision_model.`).

    Canonical names are file names, so a part holds when every file name written for its tensors starts with one
    file prefix: converters that rewrite the tail inside a part (experts held fused and written one per expert,
    a fused qkv) and renamings inside it (Aria's `experts.fc1`) leave the split as it is."""
    prefixes = sorted({p for _, p, _ in family.parts} | set(family.outside), key=lambda p: (-len(p), p))
    written = {p: files for p, files in _written_per_part(model, names, prefixes).items() if files}
    heads = {prefix: _file_prefix(prefix, files) for prefix, files in written.items()}
    pairs = _minimal(tuple((h, p) for p, h in heads.items() if h != p), written, heads)
    layouts = {"saved": pairs} if pairs else {}
    legacy = _legacy_prefixes(model)
    if legacy:
        hub = tuple((f + legacy[m] if m in legacy else f, m) for f, m in pairs)
        hub += tuple((m + legacy[m], m) for m in legacy if m not in {p[1] for p in pairs})
        layouts["hub"] = hub
    return layouts


def _written_per_part(model, names: dict, prefixes: list[str]) -> dict[str, dict[str, str | None]]:
    """part prefix -> {file name: the memory name it was renamed from, None when a converter wrote it}: what
    transformers' save path writes for each part's tensors, each part passed through it on its own (a converter
    works within a layer, so a part holds all of its inputs)."""
    from .hf_export import to_file_names

    out: dict[str, dict] = {}
    for prefix in prefixes:
        mine = {n: t for n, t in names.items() if next(p for p in prefixes if n.startswith(p)) == prefix}
        by_id = {id(t): n for n, t in mine.items()}
        try:
            files = to_file_names(model, mine)
        except Exception as e:  # noqa: BLE001  (a converter that needs tensors of another part)
            why = f"transformers' save path does not convert {prefix}* on its own ({_one_line(e)})"
            raise NotDerivable(why) from e
        out[prefix] = {f: by_id.get(id(t)) for f, t in files.items()}
    return out


def _file_prefix(prefix: str, files: dict[str, str | None]) -> str:
    """The file prefix of a part: what the file names of its renamed-only tensors hold before their own tail (one
    for all of them), else, where every name is rewritten inside the part, the longest prefix all its file names
    share; every file name written for the part must lie under it."""
    heads = {f[:len(f) - len(m) + len(prefix)] for f, m in files.items()
             if m is not None and _keeps_tail(f, m[len(prefix):])}
    if not heads:  # a part of one tensor (`query_tokens`) is its own prefix
        heads = {_common_prefix(list(files))} if prefix.endswith(".") else set(files)
    shortest = min(heads, key=len)
    if all(h.startswith(shortest) for h in heads):  # a renaming inside the part that adds a level (`encoder.`)
        heads = {shortest}
    if len(heads) != 1:
        said = ", ".join(sorted(h or "the top level" for h in heads))
        raise NotDerivable(f"transformers writes {prefix}* under {len(heads)} file prefixes, not one ({said})")
    head = heads.pop()
    stray = next((f for f in files if not f.startswith(head)), None)
    if stray is not None:
        raise NotDerivable(f"transformers writes {stray}, a tensor of {prefix}*, outside its file prefix {head}")
    return head


def _keeps_tail(file_name: str, tail: str) -> bool:
    """The file name ends with the memory name's tail after its part prefix, at a name part's start."""
    return not tail or file_name == tail or file_name.endswith("." + tail)


def _common_prefix(names: list[str]) -> str:
    """The longest prefix of whole name parts (ending in a dot) that every name starts with, short of a block index:
    only the first block of each kind is named (`_one_per_block_kind`), so an index shared by them all is no prefix
    the other blocks share."""
    parts = [n.split(".")[:-1] for n in names]
    shared = []
    for level in zip(*parts):
        if len(set(level)) != 1 or level[0].isdigit():
            break
        shared.append(level[0])
    return "".join(p + "." for p in shared)


def _one_per_block_kind(names: dict) -> dict:
    """The names of the first block of each kind in its stack (blocks that hold the same names, layer index aside):
    transformers renames blocks of a kind alike, and its save-time renaming of a full-depth model takes seconds."""
    out = {}
    for name, tensor in names.items():
        parts = name.split(".")
        at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        kind = ".".join(parts[:at] + ["*"] + parts[at + 1:]) if at is not None else name
        out.setdefault(kind, (name, tensor))
    return dict(out.values())


def _reads_back(pairs: tuple, prefixes: list[str], head: str, prefix: str, file_name: str,
                memory_name: str | None) -> bool:
    """A file name written for the part `prefix` (file prefix `head`) reads back into that part (under its memory
    name where only its prefix is renamed) and writes back as itself; `prefixes` longest first."""
    back = rename(file_name, pairs, to_memory=True)
    renamed_only = memory_name is not None and file_name == head + memory_name[len(prefix):]
    return (next((p for p in prefixes if back.startswith(p)), None) == prefix
            and (not renamed_only or back == memory_name) and rename(back, pairs, to_memory=False) == file_name)


def _minimal(renames: tuple, written: dict[str, dict[str, str | None]], heads: dict[str, str]) -> tuple:
    """The renamings without those a shorter one already implies, checked both ways on every file name
    (`_reads_back`)."""
    longest_first = sorted(written, key=len, reverse=True)

    def exact(pairs):
        return all(_reads_back(pairs, longest_first, heads[prefix], prefix, f, m)
                   for prefix, files in written.items() for f, m in files.items())

    if not exact(renames):
        raise NotDerivable(f"the file prefixes of its parts ({', '.join(f for f, _ in renames)}) do not read back "
                           "into the parts they were written for")
    kept = list(renames)
    for pair in sorted(renames, key=lambda p: len(p[1]), reverse=True):
        trial = tuple(p for p in kept if p != pair)
        if exact(trial):
            kept = list(trial)
    return tuple(kept)


def _legacy_prefixes(model) -> dict[str, str]:
    """memory prefix of a submodel -> the prefix its load-time mapping removes (`vision_model.`)."""
    from transformers import PreTrainedModel
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import PrefixChange

    out = {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, PreTrainedModel):
            continue
        conversions = (get_checkpoint_conversion_mapping(type(module).__name__)
                       or get_checkpoint_conversion_mapping(module.config.model_type) or [])
        for c in conversions:
            if isinstance(c, PrefixChange) and c.prefix_to_remove and not c.model_prefix:
                out[name + "."] = c.prefix_to_remove + "."
    return out
