"""Architecture adapters: each reads one source family into the common namespace and writes it back.

An adapter module defines
  FORMAT: str                        short name shown by `inspect`
  DESCRIPTION: str                   what it recognises, for error messages
  detect(path: Path) -> bool         cheap: looks at file names and small JSON files only
  read(path: Path) -> Checkpoint     lazy: no tensor data is read
  write_source(checkpoint, out, force=False) -> None   the exact source layout back (round trip)
`open_checkpoint` tries them in order; the first whose `detect` says yes reads the path.

The engine asks the adapters only through this module (the functions at its end): it opens checkpoints, reads
the family table and asks how a planned component is written as transformers files; it imports no adapter
module itself.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint, Component
from ..errors import UnknownFormatError, UnreadableFileError
from . import hf_causal_lm, hf_multimodal, hf_vision, hf_whole, open_clip_vision, timm_vision
from .families import Family, family_named, rename  # noqa: F401  (family_named: the engine's: a family by model_type)
from .families import text_config_of  # noqa: F401  (the engine's: where a family's config holds its text model)
from .fused_experts import in_memory_layout  # noqa: F401  (the engine's: experts fused where inputs differ)
from .derive import is_image_text_to_text  # noqa: F401  (the engine's: a model_type transformers lists as a VLM)
from .language_pairing import as_text_only_language, as_vlm_language  # noqa: F401  (the engine's: one LM's names)
from .hf_causal_lm import is_tied, untie  # noqa: F401  (the engine's: a tied lm_head made explicit)
from .hf_common import class_layout, layout_of
from .hf_export import hf_config_dict  # noqa: F401  (the engine's: the config.json of a component's folder)
from .preprocess import image_processor_config  # noqa: F401  (the engine's: a vision output's processor file)
from .hf_whole import COMPONENT as WHOLE_COMPONENT, vocabulary_tensors  # noqa: F401  (the engine's: models merged whole)

# hf_whole last: it takes any transformers folder the others do not split into components
ADAPTERS = [open_clip_vision, timm_vision, hf_multimodal, hf_vision, hf_causal_lm, hf_whole]


def detect_adapter(path: Path):
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(f"{path}: no such file or folder")
    if not path.is_file() and not path.is_dir():  # a device, pipe or socket (reading one may never end)
        raise UnreadableFileError(f"{path}: not a regular file or folder (a device, pipe or socket{links_to(path)}); "
                                  "give a model folder or a weights file")
    for adapter in ADAPTERS:
        if adapter.detect(path):
            return adapter
    recognised = "; ".join(a.DESCRIPTION for a in ADAPTERS)
    raise UnknownFormatError(f"{path}: {describe_found(path)}; recognised formats: {recognised}")


def open_checkpoint(path: Path) -> Checkpoint:
    """Read any supported checkpoint lazily into the common namespace."""
    return detect_adapter(path).read(Path(path))


def links_to(path: Path) -> str:
    return f", linked to {path.resolve()}" if path.is_symlink() else ""


def describe_found(path: Path) -> str:
    if path.is_file():
        return f"a file of type '{path.suffix or 'none'}' that is no model folder"
    names = sorted(p.name for p in path.iterdir())[:6]
    return f"a folder holding {', '.join(names) if names else 'nothing'}"


# What the engine asks of the adapters besides opening checkpoints.

def missing_from_class(component: Component) -> list[str]:
    """The tensors the component's transformers class holds on disk that the component lacks (Qwen-VL's vision
    class also holds the projector); none when it has every name the class holds in memory (transformers 5 loads
    those too: Mixtral's fused experts)."""
    required, _ = layout_of(component)
    missing = [n for n in required if n not in component.tensors]
    if missing and all(n in component.tensors for n in class_layout(component.arch, component.config)["required"]):
        return []
    return missing


def family_file_tensors(family: Family, components: dict[str, Component], layout: str) -> dict:
    """Every component tensor of a `family` checkpoint under the name files of `layout` hold it by."""
    return hf_multimodal.family_tensors(family, components, layout)


def family_file_layout(family: Family, config: dict, layout: str, names: str = hf_multimodal.MEMORY) -> dict[str, dict]:
    """{"required": file name -> shape, "optional": ...}: the tensors the family's class built from `config` holds,
    named as files of `layout` hold them; `names`: as held in memory or as its save path writes them (the
    checkpoint's `source_config["names"]`)."""
    built = hf_multimodal.class_names(family, class_layout(family.cls, config))[names]
    renames = family.layout(layout)
    return {part: {rename(n, renames, to_memory=False): s for n, s in shapes.items()}
            for part, shapes in zip(("required", "optional"), built)}
