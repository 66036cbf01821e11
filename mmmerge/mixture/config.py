"""mergekit-moe's config as it is, and its rules checked before anything is read.

    base_model: path            # attention, norms, embeddings and head come from it
    gate_mode: hidden           # hidden | cheap_embed | random | uniform_random (| hidden_avg)
    dtype: bfloat16             # default: the base's
    experts_per_token: 2
    experts: [{source_model, positive_prompts, negative_prompts, noise_scale, residual_scale}]
                                # a prompt is text, or {text: ..., image: path} for hidden gates through a VLM
    shared_experts: [...]       # Qwen2-MoE: exactly one
    architecture: qwen          # optional: output names starting with it
    random_seed: 0              # mergekit-moe's --random-seed
    i_understand_this_is_not_useful_without_training: true   # its flag of that name
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..engine.recipe import DTYPES, _model_ref, _one_line, plain_values
from ..errors import MMMergeWarning, RecipeError

GATE_MODES = ("hidden", "cheap_embed", "random", "uniform_random", "hidden_avg", "hidden_last")
PROMPTED_MODES = ("hidden", "cheap_embed", "hidden_avg", "hidden_last")  # the gates come from prompts
IMAGE_MODES = ("hidden", "hidden_avg", "hidden_last")  # gates that may run prompts with an image


# mergekit-moe's pydantic models ignore keys they do not know; so does this, with a warning naming each
LENIENT = ConfigDict(extra="allow")


class ImagePrompt(BaseModel):
    """A prompt about an image: hidden gates run it through the whole vision-language base."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str
    image: Optional[Path] = None


def _plain_text(prompts: list | None) -> list | None:
    """`{text: ...}` without an image is the text prompt itself."""
    return None if prompts is None else [p.text if isinstance(p, ImagePrompt) and p.image is None else p
                                         for p in prompts]


class Expert(BaseModel):
    model_config = LENIENT
    source_model: str
    positive_prompts: Optional[list[Union[str, ImagePrompt]]] = None
    negative_prompts: Optional[list[Union[str, ImagePrompt]]] = None
    noise_scale: Optional[float] = None
    residual_scale: Optional[float] = None

    v_ref = field_validator("source_model", mode="before")(_model_ref)
    v_text = field_validator("positive_prompts", "negative_prompts")(_plain_text)

    def image_prompts(self) -> list[ImagePrompt]:
        return [p for p in [*(self.positive_prompts or ()), *(self.negative_prompts or ())]
                if isinstance(p, ImagePrompt)]


class MoEConfig(BaseModel):
    model_config = LENIENT
    base_model: str
    experts: list[Expert]
    gate_mode: str = "hidden"
    dtype: Optional[str] = None
    experts_per_token: int = 2
    shared_experts: Optional[list[Expert]] = None
    architecture: Optional[str] = None
    random_seed: Optional[int] = None
    i_understand_this_is_not_useful_without_training: bool = False
    text: str = ""  # the config as written, recorded in the output
    path: Optional[Path] = None  # the config file, when it is one
    folder: Optional[Path] = None  # relative model paths are relative to it (the config file's folder)

    v_ref = field_validator("base_model", mode="before")(_model_ref)

    @field_validator("gate_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in GATE_MODES:
            raise ValueError(f"unknown gate_mode {v!r} (use one of: {', '.join(GATE_MODES[:4])})")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        if v is not None and v.removeprefix("torch.") not in DTYPES:
            raise ValueError(f"unknown dtype {v!r} (use one of: {', '.join(DTYPES)})")
        return v

    @property
    def shared(self) -> list[Expert]:
        return list(self.shared_experts or [])

    def gated(self) -> list[Expert]:
        """The experts that get a router row, in mergekit's order: the experts, then the shared experts when they
        have prompts or the gates are random (a shared expert without prompts has no gate)."""
        shared = self.shared
        if shared and (any(e.positive_prompts for e in shared) or self.gate_mode in ("random", "uniform_random")):
            return [*self.experts, *shared]
        return list(self.experts)


def load_config(config: str | Path | dict | MoEConfig, **overrides: Any) -> MoEConfig:
    """The config from a YAML file, YAML text (a string with a newline) or a dict, checked by `check_rules`.
    `overrides` (command-line options) replace its keys where they are not None."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(config, MoEConfig):
        config = config.model_copy(update=given)
        check_rules(config)
        return config
    path, folder, where = None, None, "config"
    if isinstance(config, dict):
        data = plain_values(config, "config")
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        if isinstance(config, str) and "\n" in config:
            text = config
        else:
            file = Path(config)
            if not file.is_file():
                raise RecipeError(f"{file}: no such config file")
            text, path, folder, where = file.read_text(), file.absolute(), file.absolute().parent, str(file)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RecipeError(f"{where}: not valid YAML ({' '.join(str(e).strip().splitlines()[:2])})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping with base_model and experts")
    try:
        parsed = MoEConfig.model_validate({**data, **given, "text": text, "path": path, "folder": folder})
    except ValidationError as e:
        raise RecipeError(f"{where}: {_one_line(e)}") from None
    warn_ignored_keys(parsed, where)
    check_rules(parsed, where)
    return parsed


def warn_ignored_keys(config: MoEConfig, where: str) -> None:
    """One warning per key nothing reads (mergekit-moe ignores them too), with the key it looks misspelt from."""
    models = [("", config)] + [(f"{name}[{i}].", e) for name in ("experts", "shared_experts")
                               for i, e in enumerate(getattr(config, name) or [])]
    for place, model in models:
        for key in model.model_extra or {}:
            close = difflib.get_close_matches(str(key), list(type(model).model_fields), n=1, cutoff=0.75)
            hint = f"; did you mean `{close[0]}`?" if close else " (mergekit-moe ignores it too)"
            warnings.warn(f"{where}: {place}{key}: unknown key, ignored{hint}", MMMergeWarning, stacklevel=3)


def check_rules(config: MoEConfig, where: str = "config") -> None:
    """mergekit-moe's refusals (is_bad_config and the shared-expert rule), one line each. One difference:
    uniform_random gates need no prompts, as random ones do not (mergekit-moe asks for them and ignores them)."""
    if config.experts_per_token < 1:
        raise RecipeError(f"{where}: experts_per_token: must be at least 1")
    if not config.experts:
        raise RecipeError(f"{where}: experts: give at least one expert")
    if len(config.experts) < config.experts_per_token:
        raise RecipeError(f"{where}: experts_per_token: {config.experts_per_token} experts per token need at least as "
                          f"many experts (there are {len(config.experts)})")
    shared = config.shared
    if shared and len({bool(e.positive_prompts) for e in shared}) > 1:
        raise RecipeError(f"{where}: shared_experts: give positive_prompts to every shared expert or to none")
    if config.gate_mode in PROMPTED_MODES:
        for i, e in enumerate(config.experts):
            if not e.positive_prompts:
                raise RecipeError(f"{where}: experts[{i}].positive_prompts: gate_mode {config.gate_mode} computes the "
                                  "gates from prompts; give this expert some (or use gate_mode: random)")
        for name, e in [(f"experts[{i}]", e) for i, e in enumerate(config.experts)] + \
                [(f"shared_experts[{i}]", e) for i, e in enumerate(shared)]:
            if e.image_prompts() and config.gate_mode not in IMAGE_MODES:
                raise RecipeError(f"{where}: {name}: prompts with an image need gate_mode hidden (the base run on "
                                  f"them), not {config.gate_mode}")
        first = _prompts(config.experts[0])
        if len(config.experts) > 1 and all(_prompts(e) == first for e in config.experts[1:]):
            raise RecipeError(f"{where}: experts: every expert has the same prompts, so the gates cannot tell them "
                              "apart; give each expert prompts for what it should receive")
    if config.gate_mode != "random" and not config.i_understand_this_is_not_useful_without_training:
        if len(config.experts) > 1 and all(e.source_model == config.experts[0].source_model for e in config.experts):
            raise RecipeError(f"{where}: experts: every expert is {config.experts[0].source_model}, which gives the "
                              "dense model's output at a greater cost; to train the result afterwards, set "
                              "i_understand_this_is_not_useful_without_training")


def _prompts(e: Expert) -> tuple:
    return tuple(e.positive_prompts or ()), tuple(e.negative_prompts or ())
