"""A tiny processor for a tiny model of any image-text-to-text type (examples/tiny_any_family.py), from
transformers' own tables: no per-family code.

    config = tiny_config("llava")
    processor = tiny_processor("llava", config)   # raises NoTinyProcessor with the reason where it cannot

The processor class is the one transformers' PROCESSOR_MAPPING_NAMES names for the type; its image (and video)
processor the one the type's image (video) processor mapping names, at its defaults but for the fields the config
also has (the vision config's image_size as each of its sizes, `patch_size`, ...) and the frames per patch the
tower's patch embedding reads; its tokenizer a word-level one (examples/tiny_family_checkpoints.word_tokenizer) of
exactly the config's vocabulary, with each token the config names by id (`image_token_id`, `video_token_index`, bos,
eos, pad) at that id under the string the processor uses for it, and each token the processor asks the tokenizer for
(`tokenizer.image_boundary_token`) or adds to it at a free id. The processor's other arguments are the config's
fields of the same name (`patch_size`, `image_seq_length`, ...), or the model's where it computes them
(`image_seq_len`), or a field SAME_AS names; `num_additional_image_tokens` is 1 where the vision tower holds a class
embedding, and an unset image token count (`image_seq_length`, `num_image_tokens`) is the tower's patches per image
(where its config gives none, the image features the tiny model writes for one image).
A type its image processor mapping skips takes the one mapped to the other types of its processor class. The only
family knowledge is in the small PROCESSOR_ARGS and PART_FIELDS tables, each entry with its reason.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import transformers as T

from tiny_family_checkpoints import word_tokenizer

TOKEN_ID_ENDINGS = ("_token_id", "_token_index")
OWN_ROLES = ("bos", "eos", "pad")
IMAGE_TOKEN_COUNTS = ("num_image_tokens", "image_seq_length")  # processor arguments the hub's processor config sets
SIDES = ("height", "width", "shortest_edge", "longest_edge")  # the size keys set to the image size
SIDE_FIELDS = ("tile_size",)  # image processor fields that are the image size's side (Perception LM's tiles)
# Processor arguments the hub's processor config sets to a config field of another name: Gemma 3's image_seq_length
# is its config's mm_tokens_per_image (google/gemma-3-4b-it: 256 in both), Perception LM's pooling_ratio its
# projector's (facebook/Perception-LM-1B).
SAME_AS = {"image_seq_length": "mm_tokens_per_image", "pooling_ratio": "projector_pooling_ratio"}
# Types whose image processor gives its size as pixel areas (the keys SIDES names hold pixel counts), set to the area
# of the tower's image, with why.
PIXEL_AREA_SIZES = {
    "ovis2_5": "ovis-community/Ovis2.5-2B's image processor takes shortest_edge and longest_edge as its minimum and "
               "maximum pixel counts, and floors an image over the maximum to multiples of 32 pixels a side (0 by 0 "
               "under a side's worth of pixels)",
}
# Family knowledge, as data: model_type -> ({part: fields set on the processor's part}, why).
PART_FIELDS: dict[str, tuple[dict, str]] = {
    "ernie4_5_vl_moe": ({"video_processor": {"draw_on_frames": False}},
                        "baidu/ERNIE-4.5-VL-28B-A3B-PT's video processor draws timestamps on frames with a font file "
                        "(Roboto-Regular.ttf) its repository holds and that is not here; images are not drawn on"),
}
# Family knowledge, as data: model_type -> (processor arguments the config holds under no name, why).
PROCESSOR_ARGS: dict[str, tuple[dict, str]] = {
    "vipllava": ({"vision_feature_select_strategy": "default"},
                 "llava-hf/vip-llava-7b-hf's model always drops its tower's class token (get_image_features reads "
                 "hidden states [:, 1:]), which its processor counts by this strategy; its config names none"),
}


class NoTinyProcessor(Exception):
    """The type's processor cannot be built tiny (the reason is the message)."""


def _mapped_class(mapping_name: str, model_type: str):
    """The class an auto mapping names for the type (torchvision image processors before PIL ones), or None."""
    from transformers.models.auto import image_processing_auto, processing_auto, video_processing_auto

    for module in (processing_auto, image_processing_auto, video_processing_auto):
        names = getattr(module, mapping_name, None)
        if names is not None:
            break
    found = names.get(model_type)
    if isinstance(found, dict):
        found = found.get("torchvision") or found.get("pil")
    if isinstance(found, (tuple, list)):
        found = next((n for n in found if n), None)
    return getattr(T, found, None) if found else None


def _siblings_class(mapping_name: str, processor_class):
    """The class an auto mapping names for the other types of the same processor class, where they all name one, or
    None: the mapping skips Qwen3-VL-MoE, whose checkpoints hold Qwen3-VL's image processor
    (Qwen/Qwen3-VL-30B-A3B-Instruct's preprocessor_config.json), as it skips GLM-4.5V (zai-org/GLM-4.5V: GLM-4.1V's)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    found = {_mapped_class(mapping_name, t) for t, name in PROCESSOR_MAPPING_NAMES.items()
             if name == processor_class.__name__} - {None}
    return found.pop() if len(found) == 1 else None


def config_token_ids(config) -> dict[str, int]:
    """Token role -> id for every `X_token_id`/`X_token_index` the config (top level) and its text config name."""
    ids = {}
    for source in (config.get_text_config().to_dict(), config.to_dict()):
        for key, value in source.items():
            if key.endswith(TOKEN_ID_ENDINGS) and type(value) is int:
                ids[key[: -len(next(e for e in TOKEN_ID_ENDINGS if key.endswith(e)))]] = value
    return ids


def _token_strings(processor_class, roles) -> dict[str, str]:
    """Role -> the string the processor class uses for it (its `X_token` argument's default), else `<X>`."""
    params = inspect.signature(processor_class.__init__).parameters
    out = {}
    for role in roles:
        default = params.get(f"{role}_token")
        out[role] = default.default if default is not None and isinstance(default.default, str) else f"<{role}>"
    return out


def tiny_tokenizer(processor_class, config, more=(), named=None, added=()):
    """A word-level tokenizer of the config's vocabulary, every token the config names at its id (under the string
    `named` gives for its role, if any), and the tokens `more` names (roles the processor asks the tokenizer for) and
    the strings `added` (tokens the processor adds) at free ids."""
    vocab = config.get_text_config().vocab_size
    ids = config_token_ids(config)
    outside = {r: i for r, i in ids.items() if not 0 <= i < vocab}
    if outside:
        raise NoTinyProcessor(f"token ids outside the {vocab}-token vocabulary: {outside}")
    strings = {**_token_strings(processor_class, ids), **(named or {})}
    special, by_id = {}, {}
    for role, i in sorted(ids.items(), key=lambda x: x[0] not in OWN_ROLES):
        strings[role] = by_id.setdefault(i, strings[role])  # two roles of one id share its string
        special.setdefault(strings[role], i)
    for role in more:
        strings.setdefault(role, f"<{role}>")
        special.setdefault(strings[role], None)
    for role in OWN_ROLES:  # a config without one: a token of its own at the next free id
        if role not in strings:
            strings[role] = f"<{role}>"
            special.setdefault(strings[role], None)
    for string in added:
        special.setdefault(string, None)
    special.setdefault("<unk>", None)
    extra = {f"{r}_token": s for r, s in strings.items() if r not in OWN_ROLES}
    return word_tokenizer(special, bos=strings["bos"], eos=strings["eos"], pad=strings["pad"], add_bos=True,
                          extra_special_tokens=extra, size=vocab)


def _own_strings(processor, config) -> dict[str, str]:
    """Role -> the string the processor uses for a token the config names by id (its `image_token`: GOT-OCR2's
    `<imgpad>`, InternVL's tokenizer.context_image_token) where the tokenizer holds that string at another id."""
    out = {}
    for role, i in config_token_ids(config).items():
        string = getattr(processor, f"{role}_token", None)
        held = processor.tokenizer.convert_tokens_to_ids(string) if isinstance(string, str) else i
        if held != i and held not in config_token_ids(config).values():  # not another role's token (Gemma 3's boi)
            out[role] = string
    return out


def _counts_the_model_holds(model_type: str, config, params) -> dict[str, int]:
    """The processor's image token count arguments (`image_seq_len`) that the model computes from its config and
    holds under the same name (Idefics3's tokens per image after its pixel shuffle), read from the model built on the
    meta device."""
    import torch

    from tiny_any_family import model_class

    wanted = [k for k in (*IMAGE_TOKEN_COUNTS, "image_seq_len") if k in params]
    if not wanted:
        return {}
    with torch.device("meta"):
        model = model_class(model_type)._from_config(config)
    return {k: getattr(m, k) for m in model.modules() for k in wanted if type(getattr(m, k, None)) is int}


def _square(value) -> int | None:
    """The side of a square size given as one int or as [side, side]; None for anything else."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return value if type(value) is int else None


def _sized(image_processor_class, config, model_type: str):
    """The image (video) processor at its defaults but for the integer fields the config has too (`patch_size`,
    `temporal_patch_size`) and each of its sizes (`size`, `crop_size`, `max_image_size`, `tile_size`), set to the
    vision config's image_size where it has one (a timm tower's img_size; the tower's position embeddings are made for
    it), or to its area where PIXEL_AREA_SIZES says the sizes are areas."""
    default = image_processor_class()
    fields = _fields(config)
    sizes = {k: _square(fields[k]) for k in vars(default) if k in fields and _square(fields[k])}  # patch_size, ...
    if "temporal_patch_size" in vars(default) and "temporal_patch_size" not in sizes:
        sizes.update(temporal_patch_size=_frames_per_patch(config) or default.temporal_patch_size)
    vision = getattr(config, "vision_config", None)
    side = _square(getattr(vision, "image_size", None) or (getattr(vision, "model_args", None) or {}).get("img_size"))
    if side is None:
        return image_processor_class(**sizes) if sizes else default
    side = side * side if model_type in PIXEL_AREA_SIZES else side
    for key, value in vars(default).items():
        if dataclasses.is_dataclass(value):  # transformers' SizeDict
            value = dataclasses.asdict(value)
        if isinstance(value, dict) and any(value.get(k) is not None for k in SIDES):
            sizes[key] = {k: side for k in SIDES if value.get(k) is not None}
        elif key in SIDE_FIELDS and type(value) is int:
            sizes[key] = side
    return image_processor_class(**sizes) if sizes else default


def _class_tokens(config) -> int:
    """How many tokens the vision tower adds to its patches: 1 where it holds a class embedding (CLIP's), else 0
    (the hub's processor config says it; the model config does not). Asked of the tower built on the meta device."""
    tower = _meta_tower(config)
    names = (n for n, _ in tower.named_parameters()) if tower is not None else ()
    return int(any(n.endswith(("class_embedding", "cls_token")) for n in names))


def _meta_tower(config):
    """The vision tower built from the vision config on the meta device; None where the config has no vision config,
    or one AutoModel does not build (Florence-2's DaViT, PaddleOCR-VL's: the processor's defaults then stand)."""
    import torch

    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    vision = getattr(config, "vision_config", None)
    if vision is None or vision.model_type not in MODEL_MAPPING_NAMES:
        return None
    with torch.device("meta"):
        return T.AutoModel.from_config(vision)


def _frames_per_patch(config) -> int | None:
    """How many frames one patch of the tower spans, read from its patch embedding's kernel: a 3-D one's depth, 1 for
    a 2-D one (LLaVA-OneVision-1.5's tower; the Qwen2-VL image processor it is mapped to cuts patches of 2 frames)."""
    tower = _meta_tower(config)
    kernel = next((p for n, p in (tower.named_parameters() if tower is not None else ())
                   if "patch" in n and p.dim() in (4, 5)), None)
    return None if kernel is None else kernel.shape[2] if kernel.dim() == 5 else 1


def _patches(config) -> int | None:
    """The vision tower's patches per image, (image_size // patch_size)², where its config says both."""
    vision = getattr(config, "vision_config", None)
    size, patch = _square(getattr(vision, "image_size", None)), _square(getattr(vision, "patch_size", None))
    return (size // patch) ** 2 if size and patch else None


def _features_per_image(model_type: str, config, image_processor) -> int | None:
    """The image features the model writes for one image of the image processor's size, where the vision config
    gives no patch count (Florence-2's DaViT strides its patches stage by stage): asked of the tiny model itself."""
    import torch
    from PIL import Image

    from tiny_any_family import model_class

    try:
        model = model_class(model_type)._from_config(config).eval()
        pixels = image_processor(images=[Image.new("RGB", (64, 48))], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features = model.get_image_features(pixels)
    except Exception:  # noqa: BLE001  (a model that does not answer: the processor's default stands)
        return None
    features = getattr(features, "pooler_output", features)
    return features.shape[1] if isinstance(features, torch.Tensor) and features.dim() == 3 else None


def _fields(config) -> dict:
    """The text config's fields, the vision config's (a timm tower's `model_args` among them: Perception LM's patch
    size), then the config's own."""
    fields = {}
    vision = getattr(config, "vision_config", None)
    timm = getattr(vision, "model_args", None)
    for c in (config.get_text_config().to_dict(), timm if isinstance(timm, dict) else {},
              vision.to_dict() if vision is not None else {}, config.to_dict()):
        fields.update(c)
    return fields


def tiny_processor(model_type: str, config):
    """The type's processor built tiny for `config` (see the module docstring); NoTinyProcessor says why not."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    cls = getattr(T, PROCESSOR_MAPPING_NAMES.get(model_type) or "", None)
    if cls is None:
        raise NoTinyProcessor("transformers names no processor class for it")
    parts = {}
    for attribute in cls.get_attributes():
        if attribute == "tokenizer":
            continue
        mapping = {"image_processor": "IMAGE_PROCESSOR_MAPPING_NAMES",
                   "video_processor": "VIDEO_PROCESSOR_MAPPING_NAMES"}.get(attribute)
        part = mapping and (_mapped_class(mapping, model_type) or _siblings_class(mapping, cls))
        if part is None:
            raise NoTinyProcessor(f"its processor needs a {attribute} transformers maps to no class for it")
        parts[attribute] = _sized(part, config, model_type)
        for field, value in PART_FIELDS.get(model_type, ({}, ""))[0].get(attribute, {}).items():
            setattr(parts[attribute], field, value)
    fields = _fields(config)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: fields[k] for k in params if k in fields and k not in parts and not k.endswith("_token")}
    kwargs.update({k: fields[v] for k, v in SAME_AS.items() if k in params and k not in kwargs and v in fields})
    kwargs.update(PROCESSOR_ARGS.get(model_type, ({}, ""))[0])
    if "num_additional_image_tokens" in params and "num_additional_image_tokens" not in kwargs:
        kwargs["num_additional_image_tokens"] = _class_tokens(config)
    kwargs.update(_counts_the_model_holds(model_type, config, params))
    image_processor = parts.get("image_processor")
    unset = [key for key in IMAGE_TOKEN_COUNTS if (key in params and kwargs.get(key) is None)
             or getattr(image_processor, key, 0) is None]
    patches = (_patches(config) or _features_per_image(model_type, config, image_processor)) if unset else None
    for key in IMAGE_TOKEN_COUNTS:  # unset: one token per patch of the tower's image
        if key in params and kwargs.get(key) is None and patches:
            kwargs[key] = patches
        if getattr(image_processor, key, 0) is None and patches:
            setattr(image_processor, key, patches)
    more, named, added = [], {}, []
    while True:  # the tokens the processor asks its tokenizer for (`tokenizer.image_boundary_token`), one by one
        tokenizer = tiny_tokenizer(cls, config, more, named, added)
        try:
            processor = cls(**parts, tokenizer=tokenizer, **kwargs)
            own = {r: v for r, v in _own_strings(processor, config).items() if named.get(r) != v}
            vocab = config.get_text_config().vocab_size  # a few tokens added past it: Idefics3's <end_of_utterance>
            beyond = [t for t, i in processor.tokenizer.get_vocab().items() if i >= vocab and t not in added]
            beyond = beyond if len(beyond) <= 8 else []  # not PaliGemma's 1024 location tokens
            if not own and not beyond:
                return processor
            named.update(own)
            added += beyond
        except (AttributeError, ValueError) as e:  # HunYuan-VL's: "Tokenizer is missing required attribute ..."
            asked = re.search(r"(?:has no|missing required) attribute '?(\w+)_token'?", str(e))
            if asked is None or asked.group(1) in more or len(more) > 8:
                raise NoTinyProcessor(f"{cls.__name__} refuses its parts ({type(e).__name__}: {e})") from e
            more.append(asked.group(1))
        except Exception as e:  # noqa: BLE001  (any refusal is the reason)
            raise NoTinyProcessor(f"{cls.__name__} refuses its parts ({type(e).__name__}: {e})") from e
