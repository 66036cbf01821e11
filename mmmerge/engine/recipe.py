"""Recipes: a mergekit config as it is, or a multimodal recipe with one section per component.

A mergekit config (``merge_method``, ``base_model``, ``models``, ``parameters``, ``dtype``, ``out_dtype``)
merges the components every input has. The multimodal form names a section per component::

    components:
      vision:    {merge_method: linear, models: [...]}     # a mergekit-style section
      projector: {source: path/to/llava}                   # copy the component as it is
      language:  {merge_method: ties, base_model: ..., models: [...]}
    output: {format: llava}

Parameter values follow mergekit 0.1.5: a scalar, a gradient (a list interpolated over the layer index),
a ``{filter: substring, value: ...}`` condition or a list of them (the first that matches the tensor
name wins, no ``filter`` or ``"*"`` matches all). ``engine.parameters.evaluate_setting`` resolves one value per
tensor.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..adapters import family_named, is_image_text_to_text
from ..checkpoint import COMPONENTS
from ..errors import RecipeError

Scalar = Union[bool, int, float, str]
ScalarOrGradient = Union[Scalar, list[Scalar]]


class Condition(BaseModel):
    """A value that applies to tensors whose name contains `filter` (all tensors when it is None or "*")."""

    model_config = ConfigDict(extra="forbid")
    value: ScalarOrGradient
    filter: Optional[str] = None


Setting = Union[Condition, list[Condition], ScalarOrGradient]
Parameters = dict[str, Setting]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def dtype_of(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    return DTYPES[name.removeprefix("torch.")]


def _check_dtype(v: str | None) -> str | None:
    if v is not None and v.removeprefix("torch.") not in DTYPES:
        raise ValueError(f"unknown dtype {v!r} (use one of: {', '.join(DTYPES)})")
    return v


def _local_path(v: Any) -> Any:
    """A mergekit ModelPath ({path: ..., revision: ...}) or a plain string -> the string (`path@revision`), else
    None."""
    if isinstance(v, dict) and set(v) <= {"path", "revision"}:
        v = v.get("path") if v.get("revision") is None else f"{v.get('path')}@{v['revision']}"
    return v if isinstance(v, str) else None


def _model_ref(v: Any) -> Any:
    """mergekit also accepts a model as {path: ...} or {model: {path: ...}, lora: {path: ...}}; keep the path.

    A LoRA becomes mergekit's string form `BASE+LORA`, which the plan's opener applies while streaming.
    """
    if isinstance(v, dict):
        inner = _local_path(v.get("model", v))
        lora = _local_path(v.get("lora")) if v.get("lora") is not None else ""
        if inner is not None and lora is not None and set(v) <= {"model", "path", "revision", "lora"}:
            return f"{inner}+{lora}" if lora else inner
        raise ValueError("a model is a path, a hub ID, {path: ..., revision: ...} or {model: ..., lora: ...}")
    return v


# The mergekit config forms below take unknown keys as mergekit 0.1.5's pydantic models do (it ignores them);
# `ignored_keys` lists them for the plan's notes, with the known key each looks like a misspelling of.
LENIENT = ConfigDict(extra="allow")


class ModelEntry(BaseModel):
    model_config = LENIENT
    model: str
    parameters: Optional[Parameters] = None

    v_ref = field_validator("model", mode="before")(_model_ref)


class InputSlice(BaseModel):
    """Layers [start, end) of one model, as one source of an output slice."""

    model_config = LENIENT
    model: str
    layer_range: tuple[int, int]
    parameters: Optional[Parameters] = None

    v_ref = field_validator("model", mode="before")(_model_ref)

    @model_validator(mode="after")
    def _range(self):
        start, end = self.layer_range
        if not 0 <= start < end:
            raise ValueError(f"layer_range [{start}, {end}] of {self.model} is empty or negative")
        return self


class OutputSlice(BaseModel):
    """Consecutive output layers, each merged from the same-offset layer of every source."""

    model_config = LENIENT
    sources: list[InputSlice]
    base_model: Optional[str] = None
    residual_weight: Optional[float] = None  # accepted and unused, as in mergekit 0.1.5
    parameters: Optional[Parameters] = None

    v_ref = field_validator("base_model", mode="before")(_model_ref)

    @model_validator(mode="after")
    def _sources(self):
        if not self.sources:
            raise ValueError("a slice needs at least one source")
        models = [s.model for s in self.sources]
        twice = sorted({m for m in models if models.count(m) > 1})
        if twice:  # its ranges would be one input under one name (mergekit refuses it too)
            raise ValueError(f"model {twice[0]} is a source of one slice twice; a slice takes each model once")
        lengths = {s.layer_range[1] - s.layer_range[0] for s in self.sources}
        if len(lengths) > 1:
            raise ValueError(f"the sources of a slice must hold as many layers each (they hold {sorted(lengths)})")
        return self

    @property
    def num_layers(self) -> int:
        return self.sources[0].layer_range[1] - self.sources[0].layer_range[0]


class TokenSource(BaseModel):
    """Where one output token's embedding row comes from: `{kind: zero}`, or `{kind: model_token, model, token |
    token_id}` (a row of that model's own vocabulary)."""

    model_config = LENIENT
    kind: Literal["zero", "model_token"]
    model: Optional[str] = None
    token: Optional[str] = None
    token_id: Optional[int] = None

    v_ref = field_validator("model", mode="before")(_model_ref)

    @model_validator(mode="after")
    def _one(self):
        if self.kind == "model_token":
            if self.model is None:
                raise ValueError("a model_token source needs a `model`")
            if (self.token is None) == (self.token_id is None):
                raise ValueError("a model_token source needs exactly one of `token` and `token_id`")
        return self


class TokenSetting(BaseModel):
    """An output token's row: from `source` (a model, or a TokenSource), even where every model has the token
    when `force` is set."""

    model_config = LENIENT
    source: Union[TokenSource, str, None] = None
    force: bool = False

    @field_validator("source", mode="before")
    @classmethod
    def _model(cls, v):
        return _model_ref(v) if not (isinstance(v, dict) and "kind" in v) else v


class TokenizerSection(BaseModel):
    """mergekit's `tokenizer:` section: the output vocabulary, tokens to add or place, padding of the rows."""

    model_config = LENIENT
    source: str = "union"
    tokens: Optional[dict[str, TokenSetting]] = None
    pad_to_multiple_of: Optional[int] = None

    v_ref = field_validator("source", mode="before")(_model_ref)

    @field_validator("pad_to_multiple_of")
    @classmethod
    def _positive(cls, v):
        if v is not None and v < 1:
            raise ValueError(f"pad_to_multiple_of must be at least 1, got {v}")
        return v


class MergeSection(BaseModel):
    """One merge: the fields of a mergekit config (`models:` or `slices:`), and those mmmerge refuses by name."""

    model_config = LENIENT
    merge_method: str
    base_model: Optional[str] = None
    models: Optional[list[ModelEntry]] = None
    slices: Optional[list[OutputSlice]] = None
    parameters: Optional[Parameters] = None
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None
    # mmmerge's own: `float32` computes half-precision merges in float32 (rounded once) instead of as mergekit does
    compute_dtype: Optional[Literal["float32"]] = None
    # mmmerge's own: `per_tensor` seeds each tensor's random draws from the seed and its name, instead of
    # drawing from one stream in mergekit's order
    random_stream: Optional[Literal["mergekit", "per_tensor"]] = None
    tokenizer_source: Optional[str] = None  # base | union | a model
    tokenizer: Optional[TokenizerSection] = None
    chat_template: Optional[str] = None  # a name (chatml, llama3, alpaca, mistral, exaone, auto) or a Jinja template
    modules: Optional[Any] = None  # read at the top level of a recipe (`from_mergekit_modules`), refused here

    v_ref = field_validator("base_model", "tokenizer_source", mode="before")(_model_ref)
    v_dtype = field_validator("dtype", "out_dtype")(_check_dtype)

    @model_validator(mode="after")
    def _supported(self):
        if self.modules is not None:
            raise ValueError("`modules` sections are read only at the top level of a recipe")
        if self.tokenizer is not None and self.tokenizer_source is not None:
            raise ValueError("give `tokenizer_source` or a `tokenizer` section, not both")
        if (self.models is None) == (self.slices is None):
            close = [f"; {k}: unknown key, did you mean `{m[0]}`?" for k in self.model_extra or {}
                     if (m := difflib.get_close_matches(str(k), ["models", "slices"], n=1, cutoff=0.75))]
            raise ValueError("give exactly one of `models` and `slices`" + "".join(close[:1]))
        if self.models is not None and not self.models:
            raise ValueError("`models` must list at least one model")
        if self.slices is not None and not self.slices:
            raise ValueError("`slices` must list at least one slice")
        names = [m.model for m in self.models or []]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model {dupes[0]} is listed twice")
        return self

    def input_models(self) -> list[str]:
        """Models in mergekit's order: the listed ones (every slice's sources), then the base model(s) if not
        listed."""
        if self.slices is not None:
            names = list(dict.fromkeys(src.model for sl in self.slices for src in sl.sources))
            bases = [sl.base_model for sl in self.slices if sl.base_model] + [self.base_model]
        else:
            names, bases = [m.model for m in self.models], [self.base_model]
        for base in bases:
            if base is not None and base not in names:
                names.append(base)
        return names

    def model_parameters(self, model: str) -> Parameters | None:
        for m in self.models or []:
            if m.model == model:
                return m.parameters
        return None


class SourceSection(BaseModel):
    """Copy a component from a checkpoint unchanged."""

    model_config = ConfigDict(extra="forbid")
    source: str
    v_ref = field_validator("source", mode="before")(_model_ref)


class OutputSpec(BaseModel):
    """`hf`: one component as its own transformers folder; a family's model_type (`llava`, `qwen2_5_vl`, ...):
    one checkpoint of that family; `family`: the family of the first input that holds all three components."""

    model_config = ConfigDict(extra="forbid")
    format: str = "hf"

    @field_validator("format")
    @classmethod
    def _known(cls, v: str) -> str:
        """A family's model_type: one with a row, or one transformers lists whose row may derive only from a
        checkpoint's config (gemma4's default config has no vision config); the inputs are checked when planning."""
        if v not in ("hf", "family") and not is_image_text_to_text(v) and family_named(v) is None:
            raise ValueError(f"unknown output format {v!r} (hf, family, or an image-text-to-text model_type of "
                             "transformers whose class splits into vision, projector and language, e.g. llava)")
        return v


class MultimodalRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    components: dict[Literal["vision", "projector", "language"], Union[SourceSection, MergeSection]]
    output: OutputSpec = Field(default_factory=OutputSpec)
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None

    v_dtype = field_validator("dtype", "out_dtype")(_check_dtype)

    @model_validator(mode="after")
    def _formats(self):
        if not self.components:
            raise ValueError("`components` is empty")
        # the projector is checked when planning: a family whose tower writes the language width has none
        if self.output.format != "hf" and not {"vision", "language"} <= set(self.components):
            missing = [c for c in COMPONENTS if c not in self.components]
            raise ValueError(f"output format {self.output.format} needs all three components; "
                             f"missing: {', '.join(missing)}")
        if self.output.format == "hf" and len(self.components) != 1:
            raise ValueError("output format hf holds one component; use format: family (or a family such as "
                             "llava) for vision+projector+language")
        return self


class Recipe(BaseModel):
    """A parsed recipe: `merge` for a mergekit config, `multimodal` for the per-component form."""

    merge: Optional[MergeSection] = None
    multimodal: Optional[MultimodalRecipe] = None
    text: str = ""  # the recipe as written, recorded in the output
    folder: Optional[Path] = None  # where a recipe file lives (relative paths fall back to it)


def _location(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper() or "[" in str(p)))


def _one_line(e: ValidationError) -> str:
    """The most useful error of a pydantic validation failure, as one line."""
    errors = e.errors()
    # Unions report a failure per alternative; the one that got furthest names the real problem.
    best = max(errors, key=lambda x: len(x["loc"]))
    custom = [x for x in errors if x["type"] == "value_error"]
    if custom:
        best = custom[0]
    msg = best["msg"].removeprefix("Value error, ")
    loc = _location(best)
    parts = [str(p) for p in best["loc"]]
    if "parameters" in parts and best["type"] != "value_error" and len(parts) > parts.index("parameters") + 1:
        loc = ".".join(parts[: parts.index("parameters") + 2])
        msg = ("not a valid parameter value (a number, true/false, a list of numbers, or a list of "
               "{filter, value} conditions)")
    if best["type"] == "extra_forbidden":
        msg = "unknown key"
    elif best["type"] == "missing":
        msg = "required key is missing" + misspelt_as(str(best["loc"][-1]), best.get("input"))
    return f"{loc}: {msg}" if loc else msg


def misspelt_as(missing: str, given) -> str:
    """`; did you mean ...` when a key of the mapping `given` looks like a misspelling of the `missing` key."""
    if not isinstance(given, dict):
        return ""
    close = difflib.get_close_matches(missing, [str(k) for k in given], n=1, cutoff=0.75)
    return f"; `{close[0]}` is not a key: did you mean `{missing}`?" if close else ""


# mergekit's module names (its multimodal architecture definitions) -> mmmerge's components
MERGEKIT_MODULES = {"default": "language", "text_decoder": "language", "language_model": "language",
                    "vision_tower": "vision", "vision_model": "vision", "multi_modal_projector": "projector"}


def from_mergekit_modules(data: dict, where: str) -> dict:
    """mergekit's multimodal form (`modules:` with one section per module) as a `components:` recipe: each
    module's section takes the top-level keys, its parameters over the global ones as mergekit resolves them;
    a component no module names is copied from the base model; the output is the base model's family."""
    modules = data.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise RecipeError(f"{where}: modules: expected a mapping of module name to section")
    if data.get("models") is not None or data.get("slices") is not None:
        raise RecipeError(f"{where}: give one of `models`, `slices` or `modules`")
    components = {}
    # top-level keys go into every section (keys mergekit ignores too: they are noted there as ignored)
    shared = {k: v for k, v in data.items() if k not in ("modules", "parameters", "models", "slices")}
    for name, section in modules.items():
        if name not in MERGEKIT_MODULES:
            raise RecipeError(f"{where}: modules.{name}: unknown module (known: {', '.join(MERGEKIT_MODULES)})")
        if not isinstance(section, dict):
            raise RecipeError(f"{where}: modules.{name}: expected a section with `models` or `slices`")
        merged = {**shared, **{k: v for k, v in section.items() if k != "parameters"}}
        if data.get("parameters") is not None or section.get("parameters") is not None:
            merged["parameters"] = {**(data.get("parameters") or {}), **(section.get("parameters") or {})}
        components[MERGEKIT_MODULES[name]] = merged
    if set(modules) == {"default"}:  # a single-module (text-only) architecture: a plain causal LM comes out
        return components["language"]
    base = data.get("base_model")
    for cname in COMPONENTS:
        if cname not in components:
            if base is None:
                raise RecipeError(f"{where}: modules: no section for the {cname} and no base_model to copy it from")
            components[cname] = {"source": base}
    return {"components": components, "output": {"format": "family"}}


def ignored_keys(recipe: "Recipe", notes: list[str], warnings: list[str]) -> None:
    """Keys the mergekit forms of a recipe carry but nothing reads (a top-level `name:`, `int8_mask` beside a
    model): noted as ignored, as mergekit ignores them; one that looks like a misspelling of a key read at
    the same place (`dype`, `nomalize`) is warned about instead. Each key is said once, with every place."""
    places: dict[tuple[str, str | None], list[str]] = {}  # (key, the key it looks misspelt from) -> places

    def walk(model: BaseModel, where: str) -> None:
        known = list(type(model).model_fields)
        for key in model.model_extra or {}:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.75)
            places.setdefault((str(key), close[0] if close else None), []).append(f"{where}{key}")
        for name in known:
            value = getattr(model, name)
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if isinstance(item, BaseModel):
                    walk(item, f"{where}{name}{f'[{i}]' if isinstance(value, list) else ''}.")

    if recipe.merge is not None:
        walk(recipe.merge, "")
    else:
        for cname, section in recipe.multimodal.components.items():
            walk(section, f"components.{cname}.")
    for (key, close), at in places.items():
        if close:
            warnings.append(f"{', '.join(at)}: unknown key, ignored; did you mean `{close}`?")
        else:
            notes.append(f"{', '.join(at)}: ignored (mergekit 0.1.5 ignores it too)")


def parse_recipe(data: Any, text: str = "", folder: Path | None = None, where: str = "recipe") -> Recipe:
    """Validate a recipe given as a dict (already loaded from YAML)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping of keys (merge_method, models, ... or components)")
    if "modules" in data:
        data = from_mergekit_modules(data, where)
    try:
        if "components" in data:
            return Recipe(multimodal=MultimodalRecipe.model_validate(data), text=text, folder=folder)
        return Recipe(merge=MergeSection.model_validate(data), text=text, folder=folder)
    except ValidationError as e:
        raise RecipeError(f"{where}: {_one_line(e)}") from None
    except RuntimeError as e:  # pragma: no cover - pydantic wraps validator errors; kept for safety
        raise RecipeError(f"{where}: {e}") from None


def plain_values(value, where: str):
    """A recipe given as a dict holds what a YAML file can (paths become text): anything else (`weight: object()`)
    is refused naming its key, before it reaches the YAML writer or the plan."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: plain_values(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise RecipeError(f"{where}: a value of type {type(value).__name__} cannot be in a recipe (numbers, text, true/false, "
                      "lists and mappings can)")


def load_recipe(recipe: str | Path | dict | Recipe) -> Recipe:
    """A recipe from a YAML file path, YAML text (a string with a newline), or a dict."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        recipe = plain_values(recipe, "recipe")
        return parse_recipe(recipe, yaml.safe_dump(recipe, sort_keys=False))
    if isinstance(recipe, str) and "\n" in recipe:
        text, folder, where = recipe, None, "recipe"
    else:
        path = Path(recipe)
        if not path.is_file():
            raise RecipeError(f"{path}: no such recipe file")
        text, folder, where = path.read_text(), path.absolute().parent, str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()
        raise RecipeError(f"{where}: not valid YAML ({' '.join(first[:2])})") from None
    return parse_recipe(data, text, folder, where)
