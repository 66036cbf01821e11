"""Everything `stitch` decides before it writes: options checked, both sources opened, the projector resolved (and
transferred), the tokenizer given `<image>`, the embeddings grown, the config built and the LLaVA's tensors checked
against it, the alignment data read. Every bad input is refused here, before anything is written or trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import Component, LazyTensor
from ..device import resolve_device
from ..errors import MMMergeError, RecipeError, ShapeMismatchError, UnsupportedArchitectureError
from ..validate import finite_number, floating_dtype, integer
from .fitting import FITS, transfer
from .options import StitchOptions
from .vision import (DEFAULT_FEATURE_LAYER, check_feature_layer, feature_selection, image_seq_length, layers,
                     vision_preprocess)
from .vocab import IMAGE_TOKEN, prepare_tokenizer, resize_language, rows_for
from .writer import check_layout, llava_config, llava_tensors, projector_component


@dataclass(frozen=True, kw_only=True)
class ImageFeatures:
    """Which of the encoder's features the LLM sees: the layer(s), the token selection, how many tokens an image
    becomes."""

    layer: int | list[int]
    strategy: str  # "default" drops the class token, "full" keeps every token
    additional: int  # class and register tokens
    seq_len: int  # tokens per image


@dataclass(frozen=True, kw_only=True)
class NewTokens:
    """What the language model's vocabulary gains: the added tokens, `<image>`'s id, embedding rows before and
    after."""

    added: list[str]
    image_token_id: int
    vocab_size: tuple[int, int]


@dataclass(kw_only=True)
class StitchPlan:
    """Everything `stitch` decided before writing (built with keywords: it has many fields)."""

    vision_path: Path
    language_path: Path
    out: Path
    options: StitchOptions
    dtype: torch.dtype | None  # options.dtype as a torch dtype
    vision_format: str
    vision: Component
    preprocess: dict  # the encoder's preprocessing
    language: Component  # as read (the fits embed captions with its table)
    language_out: Component  # embeddings grown for the new tokens
    tokenizer: object  # with <image>
    text_hidden: int
    emb_in: str
    tokens: NewTokens
    features: ImageFeatures
    source: object | None  # projectors.ProjectorSource
    projector: object  # the projector module
    how: str  # where the projector came from and how it was made
    transfer: object | None  # projectors.TransferReport
    fit: str | None  # a key of fitting.FITS
    pairs: list | None  # image-caption pairs
    config: object  # transformers.LlavaConfig
    tensors: dict[str, LazyTensor]
    notes: list[str] = field(default_factory=list)

    def with_projector(self, projector) -> None:
        """Put a fitted or trained `projector` in place: its tensors, and its activation and bias in the config."""
        proj_comp, act, bias = projector_component(projector, self.text_hidden)
        self.config.projector_hidden_act, self.config.multimodal_projector_bias = act, bias
        self.projector = projector
        self.tensors = llava_tensors(self.vision, proj_comp, self.language_out, self.dtype)
        check_layout(self.config, self.tensors)


def check_options(o: StitchOptions) -> torch.dtype | None:
    """Refuse option values no source could make right; return the dtype as a torch dtype."""
    if (o.projector is None) == (o.projector_type is None):
        raise RecipeError("give exactly one of projector (a LLaVA folder or projector file) and projector_type")
    if o.fit is not None and o.fit not in FITS:
        raise RecipeError(f"fit {o.fit!r} is unknown; use one of {', '.join(FITS)}")
    if o.fit is not None and o.align_data is None:
        raise RecipeError(f"fit={o.fit!r} needs align_data (--align-data): an image-caption JSONL")
    dtype = o.dtype
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise RecipeError(f"dtype {dtype!r} is not a torch dtype (e.g. float16, bfloat16, float32)")
        dtype = getattr(torch, dtype)
    if dtype is not None:
        floating_dtype("dtype", dtype)
    finite_number("lr", o.lr, low=0, low_open=True)
    finite_number("alpha", o.alpha, low=0)
    integer("train_steps", o.train_steps, low=0)
    integer("batch_size", o.batch_size, low=1)
    if o.device is not None:
        resolve_device(o.device)
    return dtype


def resolve_projector(o: StitchOptions, source, vision: Component, vision_path: Path, language: Component,
                      language_path: Path, tokenizer, emb_in: str, in_features: int):
    """(projector, how it was made, transfer report): the source's projector, checked against both sides and
    transferred when asked, or a new one of `projector_type`."""
    from ..projectors import build

    text_hidden = language.tensors[emb_in].shape[1]
    if source is None:
        proj = build(o.projector_type, in_features, text_hidden, seed=o.seed)
        return proj, f"new {proj.projector_type} (seed {o.seed})", None
    proj, report = source.projector, None
    how = f"{source.format} projector from {source.path}"
    if proj.in_features != in_features:
        per_layer = vision.config["hidden_size"]
        raise ShapeMismatchError(f"{source.path}: the projector takes {proj.in_features} features, the vision encoder "
                                 f"{vision_path} gives {in_features} ({per_layer} per layer x "
                                 f"{in_features // per_layer})")
    if o.transfer or o.projector_language is not None:
        src_lm = Path(o.projector_language) if o.projector_language is not None else source.llava
        if src_lm is None:
            raise RecipeError(f"{source.path}: to transfer this projector, name the LLM it was made for "
                              "(projector_language / --projector-language)")
        proj, report = transfer(proj, src_lm, language_path, tokenizer, language.tensors[emb_in].load(), o)
        how += f", transferred from {src_lm}"
    if proj.out_features != text_hidden:
        raise ShapeMismatchError(f"{source.path}: the projector outputs {proj.out_features} features, the language "
                                 f"model {language_path} embeds tokens in {text_hidden}; transfer it (--transfer)")
    return proj, how, report


def resolve_fit(o: StitchOptions, source, proj) -> str | None:
    """The fitting method: the one asked for, else ridge for a new linear projector and training for any other
    when there is alignment data; refused where it cannot apply."""
    fit = o.fit or (None if o.align_data is None else
                    "ridge" if source is None and proj.projector_type == "linear" else "train")
    if fit in ("ridge", "procrustes") and (source is not None or proj.projector_type != "linear"):
        raise RecipeError(f"fit={fit!r} makes a new linear projector; use projector_type='linear' (or fit='train')")
    if fit == "train" and proj.depth == 0:
        raise RecipeError("an identity projector has no parameters to train")
    return fit


def plan_stitch(vision_path: Path, language_path: Path, out: Path, o: StitchOptions) -> StitchPlan:
    """Check and open everything `stitch` needs; raise an MMMergeError for the first thing wrong."""
    from ..adapters import open_checkpoint
    from ..io.atomic import check_output_dir
    from ..projectors import load_projector
    from ..projectors.language import embedding_names, load_tokenizer

    dtype = check_options(o)
    check_output_dir(out, o.force)
    notes: list[str] = []

    vckpt = open_checkpoint(vision_path)
    vis = vckpt.component("vision")
    if vckpt.family is not None and vckpt.family.not_in_llava:
        raise UnsupportedArchitectureError(f"{vision_path}: the {vis.arch} vision tower of {vckpt.family.model_type} "
                                           f"{vckpt.family.not_in_llava}; a LLaVA checkpoint cannot hold it")
    pre, note = vision_preprocess(vision_path, vis)
    notes += [note] if note else []

    lang = open_checkpoint(language_path).component("language")
    tokenizer = load_tokenizer(language_path)
    emb_in, emb_out = embedding_names(lang)
    text_hidden = lang.tensors[emb_in].shape[1]

    # what the projector source was made for decides the defaults
    source = load_projector(o.projector) if o.projector is not None else None
    layer = o.vision_feature_layer if o.vision_feature_layer is not None else (
        source.vision_feature_layer if source is not None and source.vision_feature_layer is not None
        else DEFAULT_FEATURE_LAYER)
    check_feature_layer(layer, vis)
    strategy, additional = feature_selection(vis, source.vision_feature_select_strategy if source else None)
    seq_len = image_seq_length(pre, vis, strategy, additional)
    in_features = vis.config["hidden_size"] * len(layers(layer))
    proj, how, transfer_report = resolve_projector(o, source, vis, vision_path, lang, language_path, tokenizer,
                                                   emb_in, in_features)
    fit = resolve_fit(o, source, proj)
    pairs = None
    if o.align_data is not None:
        from ..projectors.align import read_pairs

        pairs = read_pairs(o.align_data, o.image_folder, max_pixels=o.max_image_pixels)

    added = prepare_tokenizer(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    old_rows = lang.tensors[emb_in].shape[0]
    rows = rows_for(tokenizer, old_rows)
    lang_out = resize_language(lang, rows, o.seed, emb_in, emb_out)

    try:
        proj_comp, act, bias = projector_component(proj, text_hidden)
    except MMMergeError as e:
        raise type(e)(f"{source.path if source is not None else 'projector_type'}: {e}") from e
    cfg = llava_config(vis, lang_out, image_token_id=image_token_id, seq_len=seq_len, act=act, bias=bias,
                       layer=layer, strategy=strategy, dtype=dtype)
    tensors = llava_tensors(vis, proj_comp, lang_out, dtype)
    check_layout(cfg, tensors)
    return StitchPlan(vision_path=vision_path, language_path=language_path, out=out, options=o, dtype=dtype,
                      vision_format=vckpt.format, vision=vis, preprocess=pre, language=lang, language_out=lang_out,
                      tokenizer=tokenizer, text_hidden=text_hidden, emb_in=emb_in,
                      tokens=NewTokens(added=added, image_token_id=image_token_id, vocab_size=(old_rows, rows)),
                      features=ImageFeatures(layer=layer, strategy=strategy, additional=additional, seq_len=seq_len),
                      source=source, projector=proj, how=how,
                      transfer=transfer_report, fit=fit, pairs=pairs, config=cfg, tensors=tensors, notes=notes)
