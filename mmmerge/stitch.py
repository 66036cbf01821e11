"""Vision encoder + projector + causal LLM -> one LLaVA checkpoint with its processor.

The output folder loads with `LlavaForConditionalGeneration.from_pretrained` and
`AutoProcessor.from_pretrained` with no missing or unexpected keys:

- config.json: the encoder's and the LLM's configs, `<image>`'s id, the feature layer, the feature selection
  the encoder needs ("default" drops a class token; SigLIP has none: "full"), image_seq_length, the
  projector's activation;
- weights, streamed tensor by tensor: the vision tower, the projector, the LLM; when `<image>` (or a pad
  token) is new, the embedding rows (and untied lm_head rows) grow to a multiple of 64 as LLaVA's
  conversion does, the new rows drawn from a normal with the old rows' mean and 1e-5 times their
  covariance (reproducible: a fixed seed);
- the tokenizer with `<image>` (chat template kept), the encoder's own preprocessing as the image
  processor, and a LlavaProcessor whose image-token count equals the number of image features.

The projector comes from a LLaVA folder or a projector file (optionally transferred to this LLM through
shared token embeddings), or is made fresh by type, then optionally fitted in closed form or trained on
image-caption data. Everything is validated before the first tensor is written; the folder appears whole
or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapters.hf_common import transformers_bars
from .checkpoint import Component, LazyTensor
from .device import resolve_device
from .errors import MMMergeError, RecipeError, ShapeMismatchError, UnsupportedArchitectureError
from .io.claim import writes_output
from .images import DEFAULT_MAX_PIXELS
from .validate import finite_number, floating_dtype, integer

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
PAD_MULTIPLE = 64
INIT_SCALE = 1e-5  # LLaVA's conversion: MultivariateNormal(mu, 1e-5 * sigma)
COVARIANCE_ROWS = 32768  # rows used to estimate the covariance of a larger table (all rows give the mean)
DEFAULT_FEATURE_LAYER = -2  # LLaVA-1.5
FITS = ("ridge", "procrustes", "train")
LLAVA_PROJECTOR = "LlavaMultiModalProjector"
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIDE_FILES = ("generation_config.json",)


@dataclass
class StitchReport:
    out: Path
    vision: str
    language: str
    projector: str  # where the projector came from and how it was made
    projector_type: str
    vision_feature_layer: int | list[int]
    vision_feature_select_strategy: str
    num_additional_image_tokens: int
    image_seq_length: int
    image_token_id: int
    added_tokens: list[str]
    vocab_size: tuple[int, int]  # embedding rows before, after
    transfer: object | None = None  # projectors.TransferReport
    fit_residual: float | None = None
    losses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # also raised as Python warnings (MMMergeWarning)

    def lines(self) -> list[str]:
        out = [f"wrote LLaVA to {self.out}: {self.vision} + {self.projector_type} projector + {self.language}",
               f"  projector: {self.projector}",
               f"  image: {self.image_seq_length} tokens per image, feature layer {self.vision_feature_layer}, "
               f"selection '{self.vision_feature_select_strategy}', <image> id {self.image_token_id}"]
        if self.added_tokens:
            out.append(f"  added tokens {', '.join(self.added_tokens)}; embedding rows {self.vocab_size[0]} -> "
                       f"{self.vocab_size[1]}")
        if self.transfer is not None:
            t = self.transfer
            out.append(f"  transfer: {t.method} map on {t.shared_tokens} shared tokens, residual {t.residual:.4f}")
        if self.fit_residual is not None:
            out.append(f"  fit residual {self.fit_residual:.4f}")
        if self.losses:
            out.append(f"  training loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f} ({len(self.losses)} steps)")
        out += [f"  note: {n}" for n in self.notes]
        return out


# ---- the vision side -------------------------------------------------------------------------------------------

# vision towers a LLaVA holds -> class tokens before the patch tokens (DINOv2 with registers adds its registers)
CLASS_TOKENS = {"SiglipVisionModel": 0, "Idefics3VisionTransformer": 0, "SmolVLMVisionTransformer": 0,
                "CLIPVisionModel": 1, "Dinov2Model": 1, "ViTModel": 1, "Dinov2WithRegistersModel": 1,
                "InternVLVisionModel": 1}


def feature_selection(vision: Component, projector_strategy: str | None = None) -> tuple[str, int]:
    """(vision_feature_select_strategy, num_additional_image_tokens) for the encoder's tokens.

    A class token is dropped ("default") unless the projector was made for "full"; SigLIP has none.
    """
    arch = vision.arch
    if arch not in CLASS_TOKENS:
        raise UnsupportedArchitectureError(f"a {arch} vision tower has no LLaVA feature selection mmmerge knows")
    if CLASS_TOKENS[arch] == 0:
        return "full", 0
    extra = 1 + int(vision.config.get("num_register_tokens", 0) if arch == "Dinov2WithRegistersModel" else 0)
    return ("full" if projector_strategy == "full" else "default"), extra


def vision_preprocess(path: Path, vision: Component) -> tuple[dict, str | None]:
    """The encoder's own preprocessing; a LLaVA's processor; a documented default when the source has none."""
    from .adapters.hf_vision import read_preprocess
    from .adapters.preprocess import make_preprocess

    if vision.preprocess:
        return vision.preprocess, None
    found = read_preprocess(path) if Path(path).is_dir() else None
    if found:
        return found, None
    size = vision.config.get("image_size", 224)
    size = tuple(size) if isinstance(size, list) else size
    if vision.arch == "SiglipVisionModel":
        pre = make_preprocess(size, (0.5,) * 3, (0.5,) * 3, "bicubic", "squash")
    elif vision.arch == "CLIPVisionModel":
        pre = make_preprocess(size, OPENAI_MEAN, OPENAI_STD, "bicubic", "shortest")
    else:
        pre = make_preprocess(size, IMAGENET_MEAN, IMAGENET_STD, "bicubic", "shortest")
    return pre, f"{path} has no preprocessing config; used the {vision.arch} default (mean {pre['mean']})"


def _layers(layer) -> list[int]:
    return [layer] if isinstance(layer, int) else list(layer)


def check_feature_layer(layer, vision: Component) -> None:
    n = vision.config["num_hidden_layers"] + 1  # hidden states: embeddings + every block
    for i in _layers(layer):
        if not -n <= i < n:
            raise RecipeError(f"vision feature layer {i} is out of range: the {vision.arch} has {n} hidden states "
                              f"({-n}..{n - 1})")


def image_seq_length(pre: dict, vision: Component, strategy: str, additional: int) -> int:
    h, w = pre["image_size"]
    p = vision.config["patch_size"]
    p = p if isinstance(p, int) else p[0]
    size = vision.config.get("image_size")
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    # only DINOv2 interpolates its position table; the other towers take the size they were made for
    if vision.arch not in ("Dinov2Model", "Dinov2WithRegistersModel") and (h, w) != size:
        raise ShapeMismatchError(f"the image processor gives {h}x{w} images, the {vision.arch} takes {size[0]}x{size[1]}")
    return (h // p) * (w // p) + additional - (1 if strategy == "default" else 0)


# ---- the language side -----------------------------------------------------------------------------------------

def prepare_tokenizer(tokenizer) -> list[str]:
    """Add `<image>` (and a pad token when there is none) as special tokens; return what was added."""
    from tokenizers import AddedToken

    added = []
    ids = tokenizer.encode(IMAGE_TOKEN, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids[0]) != IMAGE_TOKEN:
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        added.append(IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        added.append(PAD_TOKEN)
    return added


def new_rows(table: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` rows drawn from N(mean, 1e-5 · covariance) of `table`'s rows (the mean if that is degenerate)."""
    old = table.float()
    mu = old.mean(0)
    sample = old
    if old.shape[0] > COVARIANCE_ROWS:
        g = torch.Generator().manual_seed(seed)
        sample = old[torch.randperm(old.shape[0], generator=g)[:COVARIANCE_ROWS]]
    centered = sample - mu
    sigma = (centered.T @ centered).double() / sample.shape[0]
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(count, old.shape[1], generator=g, dtype=torch.float64)
    try:
        L = torch.linalg.cholesky(INIT_SCALE * sigma)
        rows = mu.double() + z @ L.T
    except RuntimeError:  # not positive definite (fewer rows than dimensions, constant columns ...)
        rows = mu.double().expand(count, -1)
    return rows.to(table.dtype)


def grow(t: LazyTensor, rows: int, seed: int) -> LazyTensor:
    """`t` ([vocab, d]) with rows appended up to `rows`, lazily."""
    if rows == t.shape[0]:
        return t
    return t.derive(lambda x: torch.cat([x, new_rows(x, rows - x.shape[0], seed)]), (rows, t.shape[1]))


def resize_language(language: Component, rows: int, seed: int, emb_in: str, emb_out: str | None) -> Component:
    """The language component with its embedding `emb_in` (and untied lm_head `emb_out`) rows grown and
    vocab_size updated."""
    from .adapters.hf_common import layout_of

    tensors = dict(language.tensors)
    old = tensors[emb_in].shape[0]
    if rows != old:
        tensors[emb_in] = grow(tensors[emb_in], rows, seed)
        if emb_out is not None and emb_out in tensors:
            if tensors[emb_out].shape[0] != old:
                raise ShapeMismatchError(f"{emb_out} has {tensors[emb_out].shape[0]} rows, {emb_in} {old}")
            tensors[emb_out] = grow(tensors[emb_out], rows, seed + 2)
    config = {**language.config, "vocab_size": rows}
    out = dataclasses.replace(language, config=config, tensors=tensors)
    # a tied duplicate (lm_head of tied embeddings) is optional: drop it rather than keep a stale copy
    _, optional = layout_of(out)
    out.tensors = {k: v for k, v in tensors.items() if k not in optional}
    return out


# ---- the projector ---------------------------------------------------------------------------------------------

def projector_component(projector, text_hidden: int) -> tuple[Component, str, bool]:
    from .projectors.modules import to_llava

    tensors, act, bias = to_llava(projector, text_hidden)
    return Component("projector", LLAVA_PROJECTOR, {}, {k: LazyTensor.of(v) for k, v in tensors.items()}), act, bias


def _llava_config(vision: Component, language: Component, *, image_token_id: int, seq_len: int, act: str, bias: bool,
                  layer, strategy: str):
    import transformers

    from .adapters.hf_export import hf_config_dict

    text = hf_config_dict(language)
    vcfg = hf_config_dict(vision)
    for c in (text, vcfg):
        c.pop("architectures", None)
    cfg = transformers.LlavaConfig(vision_config=vcfg, text_config=text, image_token_index=image_token_id,
                                   image_seq_length=seq_len, projector_hidden_act=act, multimodal_projector_bias=bias,
                                   vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    cfg.architectures = ["LlavaForConditionalGeneration"]
    cfg.dtype = getattr(cfg.text_config, "dtype", None) or torch.float32
    return cfg


def _check_layout(cfg, tensors: dict[str, LazyTensor]) -> None:
    import transformers

    from .adapters.hf_export import file_layout

    with torch.device("meta"):
        model = transformers.LlavaForConditionalGeneration(cfg)
    required, optional = file_layout(model)
    for k, shape in required.items():
        if k not in tensors:
            raise MMMergeError(f"LLaVA tensor {k} has no source (the stitched parts do not cover the architecture)")
        if tuple(tensors[k].shape) != shape:
            raise ShapeMismatchError(f"LLaVA tensor {k} has shape {tuple(tensors[k].shape)}, the config implies {shape}")
    extra = [k for k in tensors if k not in required and k not in optional]
    if extra:
        raise MMMergeError(f"tensor {extra[0]} has no place in LlavaForConditionalGeneration")


def _load_state(tensors: dict[str, LazyTensor], dtype=None) -> dict[str, torch.Tensor]:
    return {k: (t.load() if dtype is None else t.load().to(dtype)) for k, t in tensors.items()}


# ---- stitch ----------------------------------------------------------------------------------------------------

@writes_output(inputs=("vision", "language", "projector", "projector_language"),
               data=("align_data", "image_folder"))
def stitch(vision: Path, language: Path, out: Path, *, projector: Path | None = None, projector_type: str | None = None,
           align_data: Path | None = None, image_folder: Path | None = None,
           vision_feature_layer: int | list[int] | None = None, fit: str | None = None, transfer: bool = False,
           projector_language: Path | None = None, transfer_method: str = "ridge", alpha: float = 1e-4,
           train_steps: int = 100, lr: float = 1e-3, batch_size: int = 8, device: str | None = None,
           dtype: torch.dtype | str | None = None, seed: int = 0, force: bool = False, progress: bool = True,
           max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> StitchReport:
    """Write a LLaVA checkpoint made of the vision encoder at `vision`, a projector and the LLM at `language`.

    projector: a LLaVA folder, a projector file (`projectors.save_projector`) or an `mm_projector.bin`;
    projector_type: a fresh projector instead (linear, identity, mlp2x_gelu ...).
    align_data (+ image_folder): image-caption JSONL to fit (`fit`: ridge / procrustes, linear only) or
    train (`fit="train"`, default for MLPs and for a given projector) the projector on.
    transfer / projector_language: re-target the projector at this LLM through shared token embeddings;
    the source LLM is `projector_language`, or the LLaVA the projector comes from.
    dtype: cast every tensor (e.g. "bfloat16"); default keeps each source tensor's dtype.
    max_image_pixels: align_data images larger than this are refused before they are decoded (None: no limit).
    """
    from tqdm.auto import tqdm

    from .adapters import open_checkpoint
    from .adapters.hf_export import build_config
    from .adapters.families import FAMILIES
    from .adapters.hf_multimodal import family_tensors
    from .adapters.preprocess import image_processor_config
    from .io.atomic import atomic_output_dir, check_output_dir
    from .io.writer import write_safetensors
    from .projectors import build, load_projector, transfer_projector
    from .projectors.language import embedding_names, load_tokenizer

    vision, language, out = Path(vision), Path(language), Path(out)
    if (projector is None) == (projector_type is None):
        raise RecipeError("give exactly one of projector (a LLaVA folder or projector file) and projector_type")
    if fit is not None and fit not in FITS:
        raise RecipeError(f"fit {fit!r} is unknown; use one of {', '.join(FITS)}")
    if fit is not None and align_data is None:
        raise RecipeError(f"fit={fit!r} needs align_data (--align-data): an image-caption JSONL")
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise RecipeError(f"dtype {dtype!r} is not a torch dtype (e.g. float16, bfloat16, float32)")
        dtype = getattr(torch, dtype)
    if dtype is not None:
        floating_dtype("dtype", dtype)
    finite_number("lr", lr, low=0, low_open=True)
    finite_number("alpha", alpha, low=0)
    integer("train_steps", train_steps, low=0)
    integer("batch_size", batch_size, low=1)
    if device is not None:
        resolve_device(device)
    check_output_dir(out, force)
    notes: list[str] = []

    # vision encoder
    vckpt = open_checkpoint(vision)
    vis = vckpt.component("vision")
    if vckpt.family is not None and vckpt.family.not_in_llava:
        raise UnsupportedArchitectureError(f"{vision}: the {vis.arch} vision tower of {vckpt.family.model_type} "
                                           f"{vckpt.family.not_in_llava}; a LLaVA checkpoint cannot hold it")
    pre, note = vision_preprocess(vision, vis)
    notes += [note] if note else []

    # language model and tokenizer
    lckpt = open_checkpoint(language)
    lang = lckpt.component("language")
    tokenizer = load_tokenizer(language)
    emb_in, emb_out = embedding_names(lang)
    text_hidden = lang.tensors[emb_in].shape[1]

    # projector source: what it was made for decides the defaults
    source = load_projector(projector) if projector is not None else None
    layer = vision_feature_layer if vision_feature_layer is not None else (
        source.vision_feature_layer if source is not None and source.vision_feature_layer is not None
        else DEFAULT_FEATURE_LAYER)
    check_feature_layer(layer, vis)
    strategy, additional = feature_selection(vis, source.vision_feature_select_strategy if source else None)
    seq_len = image_seq_length(pre, vis, strategy, additional)
    in_features = vis.config["hidden_size"] * len(_layers(layer))

    transfer_report = None
    if source is not None:
        proj = source.projector
        how = f"{source.format} projector from {source.path}"
        if proj.in_features != in_features:
            raise ShapeMismatchError(f"{source.path}: the projector takes {proj.in_features} features, the vision encoder "
                                     f"{vision} gives {in_features} ({vis.config['hidden_size']} per layer x "
                                     f"{len(_layers(layer))})")
        if transfer or projector_language is not None:
            src_lm = Path(projector_language) if projector_language is not None else source.llava
            if src_lm is None:
                raise RecipeError(f"{source.path}: to transfer this projector, name the LLM it was made for "
                                  "(projector_language / --projector-language)")
            proj, transfer_report = transfer_projector(proj, src_lm, language, transfer_method, alpha,
                                                       target_tokenizer=tokenizer,
                                                       target_embeddings=lang.tensors[emb_in].load())
            how += f", transferred from {src_lm}"
        if proj.out_features != text_hidden:
            raise ShapeMismatchError(f"{source.path}: the projector outputs {proj.out_features} features, the language "
                                     f"model {language} embeds tokens in {text_hidden}; transfer it (--transfer)")
    else:
        proj = build(projector_type, in_features, text_hidden, seed=seed)
        how = f"new {proj.projector_type} (seed {seed})"

    fit = fit or (None if align_data is None else
                  "ridge" if source is None and proj.projector_type == "linear" else "train")
    if fit in ("ridge", "procrustes") and (source is not None or proj.projector_type != "linear"):
        raise RecipeError(f"fit={fit!r} makes a new linear projector; use projector_type='linear' (or fit='train')")
    if fit == "train" and proj.depth == 0:
        raise RecipeError("an identity projector has no parameters to train")
    pairs = None
    if align_data is not None:
        from .projectors.align import read_pairs

        pairs = read_pairs(align_data, image_folder, max_pixels=max_image_pixels)

    # tokenizer and embedding rows
    added = prepare_tokenizer(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    old_rows = lang.tensors[emb_in].shape[0]
    needed = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    rows = old_rows if needed <= old_rows else math.ceil(needed / PAD_MULTIPLE) * PAD_MULTIPLE
    lang_out = resize_language(lang, rows, seed, emb_in, emb_out)

    try:  # validates before any work
        proj_comp, act, bias = projector_component(proj, text_hidden)
    except MMMergeError as e:
        raise type(e)(f"{source.path if source is not None else 'projector_type'}: {e}") from e

    def assemble(proj_comp):
        tensors = family_tensors(FAMILIES["llava"], {"vision": vis, "projector": proj_comp, "language": lang_out})
        if dtype is not None:
            tensors = {k: v if v.dtype == dtype or not v.dtype.is_floating_point
                       else LazyTensor(v.shape, dtype, (lambda v=v: v.load().to(dtype))) for k, v in tensors.items()}
        return tensors

    cfg = _llava_config(vis, lang_out, image_token_id=image_token_id, seq_len=seq_len, act=act, bias=bias,
                        layer=layer, strategy=strategy)
    if dtype is not None:
        cfg.dtype = dtype
    tensors = assemble(proj_comp)
    _check_layout(cfg, tensors)

    import transformers

    fit_residual, losses = None, []
    with atomic_output_dir(out, force) as tmp, transformers_bars(False):  # our own bars say enough
        # processor first: fitting and training use it exactly as a user will
        (tmp / "preprocessor_config.json").write_text(json.dumps(image_processor_config(pre), indent=2) + "\n")
        image_processor = transformers.AutoImageProcessor.from_pretrained(tmp)
        patch = vis.config["patch_size"]
        processor = transformers.LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=patch if isinstance(patch, int) else patch[0],
            vision_feature_select_strategy=strategy, num_additional_image_tokens=additional,
            chat_template=getattr(tokenizer, "chat_template", None))
        processor.save_pretrained(tmp)

        if fit in ("ridge", "procrustes"):
            from .projectors.align import caption_embeddings, fit_projector, image_features

            tower_cls = getattr(transformers, vis.arch)
            tower = tower_cls.from_pretrained(None, config=build_config(vis), state_dict=_load_state(
                {k: v for k, v in vis.tensors.items() if k not in vis.extra}, torch.float32))
            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            X = image_features(tower, image_processor, pairs, layer, strategy, batch_size=max(batch_size, 1),
                               device=dev, progress=progress)
            del tower
            Y = caption_embeddings(lang.tensors[emb_in].load(), tokenizer, [p.caption for p in pairs])
            proj, result = fit_projector(X, Y, "linear", fit, alpha)
            fit_residual = result.residual
            how = f"linear fitted in closed form ({fit}) on {len(pairs)} image-caption pairs"
        elif fit == "train":
            from .projectors.train import train_projector

            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            load_dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
            model = transformers.LlavaForConditionalGeneration.from_pretrained(
                None, config=cfg, state_dict=_load_state(tensors, load_dtype), dtype=load_dtype)
            losses = train_projector(model, processor, pairs, steps=train_steps, lr=lr, batch_size=batch_size,
                                     device=dev, seed=seed, progress=progress)
            state = {k: v.detach().float().cpu() for k, v in model.model.multi_modal_projector.state_dict().items()}
            del model
            from .projectors.modules import from_state_dict

            proj = from_state_dict(state, act=act)
            how += f", trained {train_steps} steps on {len(pairs)} image-caption pairs"
        if fit is not None:
            proj_comp, act2, bias2 = projector_component(proj, text_hidden)
            if (act2, bias2) != (act, bias):
                cfg.projector_hidden_act, cfg.multimodal_projector_bias = act2, bias2
            tensors = assemble(proj_comp)
            _check_layout(cfg, tensors)

        cfg.save_pretrained(tmp)
        total = sum(t.nbytes for t in tensors.values())
        with tqdm(total=total, unit="B", unit_scale=True, desc="writing LLaVA", disable=not progress) as bar:
            write_safetensors(tmp, tensors, on_tensor=lambda _name, n: bar.update(n))
        for name in SIDE_FILES:
            if (language / name).is_file():
                shutil.copy2(language / name, tmp / name)

    report = StitchReport(out, f"{vckpt.format} {vis.arch}", f"{lang.arch}", how, proj.projector_type, layer,
                          strategy, additional, seq_len, image_token_id, added, (old_rows, rows), transfer_report,
                          fit_residual, losses, notes)
    if source is None and fit is None:
        report.warnings.append(untrained_projector_warning(out))
    return report


def untrained_projector_warning(out: Path) -> str:
    """Warn (Python warning, returned for the report) that `out` holds a random projector: it answers noise."""
    import warnings

    from .errors import UntrainedProjectorWarning

    message = (f"{out}: the projector is new and untrained (no projector source, no --align-data): the model sees "
               "random image features and will answer noise; fit it with --align-data CAPTIONS.jsonl or take one "
               "with --projector")
    warnings.warn(message, UntrainedProjectorWarning, stacklevel=_outside_mmmerge())
    return message


def _outside_mmmerge() -> int:
    """The `stacklevel` (for the function calling this) of the first caller outside mmmerge: a warning names the
    user's line, not a wrapper's."""
    import sys

    root = str(Path(__file__).resolve().parent)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(root):
        frame, level = frame.f_back, level + 1
    return level


from .callable_module import make_callable  # noqa: E402

make_callable(__name__, "stitch")  # `mmmerge.stitch(...)` works after `import mmmerge.stitch` (the CLI's) too
