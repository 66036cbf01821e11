"""Every option of `stitch`, with its default and what it does: what the Python API and the CLI both take."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..images import DEFAULT_MAX_PIXELS


def _option(default, doc: str):
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class StitchOptions:
    """How `stitch` makes the projector and writes the LLaVA; each field's `metadata["doc"]` says what it does."""

    projector: Path | str | None = _option(
        None, "a LLaVA folder, a projector file (projectors.save_projector), or LLaVA's mm_projector.bin")
    projector_type: str | None = _option(None, "a new projector instead: linear, identity, mlp2x_gelu, ...")
    align_data: Path | str | None = _option(None, "image-caption JSONL to fit or train the projector on")
    image_folder: Path | str | None = _option(
        None, "where the JSONL's images are (default: the JSONL's folder)")
    vision_feature_layer: int | list[int] | None = _option(
        None, "hidden state(s) fed to the projector (default: the projector's own, else -2)")
    fit: str | None = _option(
        None, "with align_data: closed-form fit of a linear projector (ridge, procrustes) or training (train); "
              "default: ridge for a new linear projector, else train")
    transfer: bool = _option(False, "re-target the projector at this LLM through shared token embeddings")
    projector_language: Path | str | None = _option(
        None, "the LLM the projector was made for (implies transfer; default: the projector's LLaVA)")
    transfer_method: str = _option("ridge", "the map between the two LLMs' embeddings: ridge or procrustes")
    alpha: float = _option(1e-4, "ridge regularisation of the transfer map and of a closed-form fit")
    train_steps: int = _option(100, "training steps of fit=train")
    lr: float = _option(1e-3, "learning rate of fit=train")
    batch_size: int = _option(8, "image-caption pairs per training step or per batch of image features")
    device: str | None = _option(None, "where fitting and training run: cpu or cuda (default: cuda when available)")
    dtype: torch.dtype | str | None = _option(
        None, "cast every floating tensor (float16, bfloat16, float32); default: keep each source tensor's dtype")
    seed: int = _option(0, "seed of a new projector, of new embedding rows and of training")
    force: bool = _option(False, "replace a previous mmmerge output at out (nothing else)")
    progress: bool = _option(True, "show progress bars")
    max_image_pixels: int | None = _option(
        DEFAULT_MAX_PIXELS, "refuse larger align_data images before decoding them (None: no limit)")


NAMES = tuple(f.name for f in dataclasses.fields(StitchOptions))


def options_from(options: StitchOptions | None, kwargs: dict) -> StitchOptions:
    """`options` (default: all defaults) with the keyword arguments of a `stitch(...)` call put over it."""
    unknown = [k for k in kwargs if k not in NAMES]
    if unknown:
        raise TypeError(f"stitch() got an unexpected keyword argument {unknown[0]!r}")
    if options is not None and not isinstance(options, StitchOptions):
        raise TypeError(f"stitch() options must be a StitchOptions, not {type(options).__name__}")
    return dataclasses.replace(options or StitchOptions(), **kwargs)


def doc(name: str) -> str:
    """The one-line description of option `name`, with its default (the CLI's help for its flag)."""
    f = StitchOptions.__dataclass_fields__[name]
    shown = f.default is not None and f.default is not False and "default" not in f.metadata["doc"]
    return f.metadata["doc"] + (f" (default: {f.default})" if shown else "")
