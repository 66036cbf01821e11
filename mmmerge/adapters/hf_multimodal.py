"""transformers image-text-to-text checkpoints of every family with a row (`families.family_named`: written by
hand or derived from transformers), split into vision, projector and language components.

Reading is renaming: file keys are renamed by part prefix (file prefix -> memory prefix) by the first of the row's
layouts (in memory, as transformers 5 saves, as hub checkpoints hold) that explains the most of them; the whole
class (built on the meta device from config.json) says what must be there and with which shape, by the names it
holds in memory or by those its save path writes (converted tensors keep their file tails: experts held fused are
written one per expert), whichever the files hold; each tensor then goes to the component whose prefix holds it,
under the component class's own names. What no component holds is kept and written back. A checkpoint is written
back in the layout it was read in.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..checkpoint import Checkpoint, Component, LazyTensor
from ..errors import UnreadableFileError, UnsupportedArchitectureError
from ..io.check import check_tensors
from ..io.folder import write_model_folder
from ..io.reader import read_folder
from .derive import why_not_split
from .families import TOP_LEVEL, Family, family_of, join_name, rename, split_name
from .hf_common import _kept_on_disk, auto_class_names, class_layout, read_config
from .hf_vision import read_preprocess

FORMAT = "transformers-<model_type>"  # e.g. transformers-llava, transformers-qwen2_5_vl
DESCRIPTION = ("transformers image-text-to-text folder (config.json with a model_type transformers lists for "
               "image-text-to-text)")
MEMORY = "memory"
# The projector's class where the row names none: the vision tower writes the language model's width itself
# (Inkling's last encoder layer), and the projector component holds no tensor.
NO_PROJECTOR = "none"


def detect(path: Path) -> bool:
    """A folder of a family in the table (any other transformers folder is read whole by `hf_whole`)."""
    if not Path(path).is_dir():
        return False
    return family_of(read_config(path)) is not None


def sub_config(cfg: dict, key: str, where: Path) -> dict:
    sub = cfg.get(key)
    if not isinstance(sub, dict) or "model_type" not in sub:
        raise UnreadableFileError(f"{where}/config.json: {key} is missing or has no model_type")
    return dict(sub)


def vision_arch(family: Family, vision_cfg: dict, where: Path) -> str:
    arch = family.vision_arch or auto_class_names("MODEL_MAPPING_NAMES").get(vision_cfg["model_type"])
    if arch is None:
        raise UnsupportedArchitectureError(f"{where}: vision model type {vision_cfg['model_type']} has no model class")
    return arch


def language_arch_and_config(family: Family, text_cfg: dict, tied: bool, where: Path) -> tuple[str, dict]:
    """The text-only class that holds the language model, and its config: the text config, renamed to the
    text-only model type where the family's text type has no causal LM of its own (Qwen2-VL's -> qwen2); the family
    class and its config as they are where that config configures the decoder (TOP_LEVEL: no class holds it alone)."""
    if family.text_config == TOP_LEVEL:
        return family.cls, dict(text_cfg)
    cfg = {**text_cfg, "tie_word_embeddings": tied, **family.language_fields}
    if family.language_type:
        cfg["model_type"] = family.language_type
        # a text config without head_dim means hidden / heads; the text-only config may default to another (glm4)
        heads = cfg.get("num_attention_heads")
        if "head_dim" not in cfg and isinstance(heads, int) and heads and isinstance(cfg.get("hidden_size"), int):
            cfg["head_dim"] = cfg["hidden_size"] // heads
    arch = family.language_arch or auto_class_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES").get(cfg["model_type"])
    if arch is None:
        raise UnsupportedArchitectureError(f"{where}: text model type {cfg['model_type']} has no causal LM class")
    return arch, cfg


def projector_config(cfg: dict, vision_cfg: dict, text_cfg: dict) -> dict:
    """The top-level settings of the family config (projector activation, feature layer, ...) and both sides'
    widths: what a projector needs to be rebuilt or checked."""
    out = {k: v for k, v in cfg.items() if not isinstance(v, (dict, list)) or k.startswith("vision_feature")}
    out.pop("architectures", None)
    out.update(vision_hidden_size=vision_cfg.get("hidden_size"), text_hidden_size=text_cfg.get("hidden_size"))
    return out


def class_names(family: Family, layout: dict) -> dict[str, tuple[dict, dict]]:
    """(required, optional) name -> shape of the family's class (`class_layout`), in the row's names two ways: as
    the class holds them in memory, and as its save path writes them, each part's file prefix read back to its
    memory prefix (converted tensors keep their written tails: experts held fused are written one per expert)."""
    saved = family.layout("saved")
    return {MEMORY: (layout["required"], layout["optional"]),
            "saved": tuple({rename(n, saved, to_memory=True): s for n, s in layout["saved"][k].items()}
                           for k in ("required", "optional"))}


def choose_layout(family: Family, names: list[str], expected: dict[str, tuple[dict, dict]]) -> tuple[str, str]:
    """(layout, names of `expected`) under which the most file keys are names of the class."""
    candidates = {MEMORY: (), **family.layouts}

    def explained(pair):
        shapes = expected[pair[1]]
        return sum(any(rename(k, candidates[pair[0]], to_memory=True) in s for s in shapes) for k in names)

    return max(((layout, kind) for layout in candidates for kind in expected), key=explained)


def read(path: Path) -> Checkpoint:
    path = Path(path)
    cfg = read_config(path)
    family = family_of(cfg)
    if family is None:
        raise UnsupportedArchitectureError(
            f"{path}/config.json: model_type {cfg.get('model_type')} is an image-text-to-text family with no row in "
            f"mmmerge's family table and none derived from transformers: {why_not_split(cfg.get('model_type'), cfg)}")
    vision_cfg = sub_config(cfg, family.vision_config, path)
    text_cfg = dict(cfg) if family.text_config == TOP_LEVEL else sub_config(cfg, family.text_config, path)
    layout = class_layout(family.cls, cfg)
    expected = class_names(family, layout)
    files = read_folder(path)
    layout_name, kind = choose_layout(family, list(files), expected)
    required, optional = expected[kind]
    renames = family.layout(layout_name)
    memory = {rename(k, renames, to_memory=True): k for k in files}

    def in_files(shapes: dict) -> dict:
        return {rename(n, renames, to_memory=False): s for n, s in shapes.items()}

    check_tensors(in_files(required), files, str(path), optional=in_files(optional), allow_unexpected=True,
                  expected_from=f"{family.cls} with this config.json")
    parts: dict[str, dict[str, LazyTensor]] = {"vision": {}, "projector": {}, "language": {}}
    outside, why = {}, {}
    for name, file_name in memory.items():
        tensor = files[file_name]
        shape = required.get(name) or optional.get(name)
        kept = next((reason for prefix, reason in family.outside.items() if name.startswith(prefix)), None)
        where = split_name(family, name) if shape is not None and kept is None else None
        if where is None:
            outside[file_name] = tensor
            reason = kept or (f"not held by {family.cls}" if shape is None else "held by no component")
            why[file_name if kept else file_name.split(".")[0]] = reason
            continue
        parts[where[0]][where[1]] = tensor

    tied = any(split_name(family, n) == ("language", "lm_head.weight") for n in optional)
    lang_arch, lang_cfg = language_arch_and_config(family, text_cfg, tied, path)
    modules = layout["modules"]
    proj_prefix = next((p for c, p, _ in family.parts if c == "projector"), None)
    proj_arch = NO_PROJECTOR if proj_prefix is None else modules.get(proj_prefix.rstrip("."), "projector")
    components = {
        "vision": Component("vision", vision_arch(family, vision_cfg, path), vision_cfg, parts["vision"],
                            read_preprocess(path)),
        "projector": Component("projector", proj_arch, projector_config(cfg, vision_cfg, text_cfg), parts["projector"]),
        "language": Component("language", lang_arch, lang_cfg, parts["language"]),
    }
    source = {"config.json": cfg, "layout": layout_name, "names": kind}
    return Checkpoint(path, f"transformers-{family.model_type}", components, why, outside, source, family=family,
                      side_files=path)


def family_tensors(family: Family, components: dict[str, Component], layout: str = "saved") -> dict[str, LazyTensor]:
    """All component tensors of a `family` checkpoint, named as files of `layout` hold them. Tensors a
    component carries but its class does not hold (`extra`) are not written."""
    renames = family.layout(layout)
    out = {}
    for cname, comp in components.items():
        for name, tensor in comp.tensors.items():
            if name not in comp.extra:
                out[rename(join_name(family, cname, name), renames, to_memory=False)] = tensor
    return out


def write_source(checkpoint: Checkpoint, out: Path, force: bool = False) -> None:
    """The folder again, in the layout it was read in, with the tensors outside the components and the side
    files (tokenizer, processor, chat template, generation config)."""
    src = checkpoint.source_config
    tensors = family_tensors(checkpoint.family, checkpoint.components, src["layout"])
    write_model_folder(out, {**tensors, **checkpoint.outside}, src["config.json"], force=force,
                       side_files=checkpoint.path)


def saved_name(checkpoint: Checkpoint, memory_name: str) -> str | None:
    """The file name transformers' save path gives the in-memory tensor `memory_name` of the checkpoint's class (peft
    names modules by memory names; a renaming inside a part, MiniMax-M3-VL's `encoder.`, leaves no prefix to rename
    by); None when the class has no such tensor or a converter writes it together with others (a fused qkv)."""
    config = checkpoint.source_config.get("config.json")
    if checkpoint.family is None or config is None:
        return None
    return _saved_names(checkpoint.family.cls, json.dumps(config, sort_keys=True, default=str)).get(memory_name)


@functools.lru_cache(maxsize=8)
def _saved_names(cls: str, config_json: str) -> dict[str, str]:
    def compute() -> dict:
        from .hf_export import class_on_meta, to_file_names

        model = class_on_meta(cls, config_json)
        out = {}
        for name, tensor in model.state_dict().items():
            written = to_file_names(model, {name: tensor})
            if len(written) == 1 and next(iter(written.values())) is tensor:  # renamed only, not converted
                out[name] = next(iter(written))
        return out

    return _kept_on_disk("saved-names", f"{cls}\n{config_json}", compute)
