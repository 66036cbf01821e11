"""The LLaVA folder: its config, its tensors (checked against the architecture the config builds), the processor
(tokenizer with `<image>`, the encoder's preprocessing), the weights streamed tensor by tensor, and the side files;
all inside a temporary folder that appears whole or not at all."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch

from ..adapters.hf_common import transformers_bars
from ..checkpoint import Component, LazyTensor
from ..io.check import check_tensors
from .vision import patch_size

LLAVA_PROJECTOR = "LlavaMultiModalProjector"
SIDE_FILES = ("generation_config.json",)


def projector_component(projector, text_hidden: int) -> tuple[Component, str, bool]:
    """The projector module as LLaVA's projector component, with its activation and whether it has biases."""
    from ..projectors.modules import to_llava

    tensors, act, bias = to_llava(projector, text_hidden)
    return Component("projector", LLAVA_PROJECTOR, {}, {k: LazyTensor.of(v) for k, v in tensors.items()}), act, bias


def llava_config(vision: Component, language: Component, *, image_token_id: int, seq_len: int, act: str, bias: bool,
                 layer, strategy: str, dtype: torch.dtype | None):
    import transformers

    from ..adapters.hf_export import hf_config_dict

    text = hf_config_dict(language)
    vcfg = hf_config_dict(vision)
    for c in (text, vcfg):
        c.pop("architectures", None)
    cfg = transformers.LlavaConfig(vision_config=vcfg, text_config=text, image_token_index=image_token_id,
                                   image_seq_length=seq_len, projector_hidden_act=act, multimodal_projector_bias=bias,
                                   vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    cfg.architectures = ["LlavaForConditionalGeneration"]
    cfg.dtype = dtype or getattr(cfg.text_config, "dtype", None) or torch.float32
    return cfg


def llava_tensors(vision: Component, projector: Component, language: Component,
                  dtype: torch.dtype | None) -> dict[str, LazyTensor]:
    """The three components under LLaVA's names; floating tensors cast to `dtype` (lazily) when one is given."""
    from ..adapters.families import family_named
    from ..adapters.hf_multimodal import family_tensors

    tensors = family_tensors(family_named("llava"), {"vision": vision, "projector": projector, "language": language})
    if dtype is not None:
        tensors = {k: v if v.dtype == dtype or not v.dtype.is_floating_point
                   else LazyTensor(v.shape, dtype, (lambda v=v: v.load().to(dtype))) for k, v in tensors.items()}
    return tensors


def check_layout(cfg, tensors: dict[str, LazyTensor]) -> None:
    """Every tensor `LlavaForConditionalGeneration(cfg)` holds is there with its shape, and nothing else is."""
    import transformers

    from ..adapters.hf_export import file_layout

    with torch.device("meta"):
        model = transformers.LlavaForConditionalGeneration(cfg)
    required, optional = file_layout(model)
    check_tensors(required, tensors, "LLaVA", optional=optional, expected_from="LlavaForConditionalGeneration",
                  got_from="the stitched parts")


@contextlib.contextmanager
def llava_folder(out: Path, force: bool):
    """The temporary folder renamed to `out` when the block ends without an error (transformers' bars hidden)."""
    from ..io.atomic import atomic_output_dir

    with atomic_output_dir(out, force) as tmp, transformers_bars(False):  # our own bars say enough
        yield tmp


def write_processor(tmp: Path, pre: dict, tokenizer, vision: Component, strategy: str, additional: int):
    """Write the image processor (the encoder's preprocessing) and a LlavaProcessor with the tokenizer; return both
    as transformers loads them, for fitting and training to use exactly as a user will."""
    import transformers

    from ..adapters.preprocess import image_processor_config

    (tmp / "preprocessor_config.json").write_text(json.dumps(image_processor_config(pre), indent=2) + "\n")
    image_processor = transformers.AutoImageProcessor.from_pretrained(tmp)
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size(vision),
        vision_feature_select_strategy=strategy, num_additional_image_tokens=additional,
        chat_template=getattr(tokenizer, "chat_template", None))
    processor.save_pretrained(tmp)
    return image_processor, processor


def write_model(tmp: Path, cfg, tensors: dict[str, LazyTensor], language: Path, progress: bool) -> None:
    """config.json, the weights streamed tensor by tensor, and the language model's side files."""
    from tqdm.auto import tqdm

    from ..io.writer import write_safetensors

    cfg.save_pretrained(tmp)
    total = sum(t.nbytes for t in tensors.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="writing LLaVA", disable=not progress) as bar:
        write_safetensors(tmp, tensors, on_tensor=lambda _name, n: bar.update(n))
    for name in SIDE_FILES:
        if (language / name).is_file():
            shutil.copy2(language / name, tmp / name)
