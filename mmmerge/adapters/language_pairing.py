"""A text-only causal LM's tensors under a VLM's names for its language model, where transformers saves the two
differently: Kimi-K2.5 writes its language layers as `blocks.N` (its tower's renaming, reversed), Cosmos3-Omni its
attention norms as `norm_q`, Qianfan-OCR its layers under `encoder.`, MiniMax-M3-VL its experts one tensor per
expert (`w1`, `w3`, `w2`) where the text-only class writes them fused as it holds them.

The VLM's language submodule and the text-only class's base model are the same transformers class, so they hold the
same names in memory, and the text-only LM is read in those names (`fused_experts.py`). Each of its tensors is
placed where the VLM's class holds it and passed through the VLM class's own save path (transformers'
`revert_weight_conversion`), as the VLM's `save_pretrained` writes it: renamed, or converted (an expert tensor
split one per expert, transposed). A merge then pairs the two name by name and writes the VLM's own format. The
text-only tensors' bits are not changed: renamed ones are the same tensors, converted ones are converted when read.
Where the output is the text-only class, the other way: the VLM's language tensors are read back through the VLM
class's own load-time conversion into the names it holds in memory (`as_text_only_language`).
"""

from __future__ import annotations

import functools
import json

from ..checkpoint import Checkpoint, Component, LazyTensor, combine
from .fused_experts import _by_pattern, _fuse, class_conversions, load_plan
from .families import join_name, rename, split_name
from .hf_common import _kept_on_disk


def as_vlm_language(vlm: Checkpoint, text: Component) -> Component | None:
    """`text` (a text-only LM, in-memory names) under the names of `vlm`'s language component; None where a tensor
    has no place in the VLM's class, or the VLM's save path writes it with others or outside its language model."""
    family, source = vlm.family, vlm.source_config
    config = json.dumps(source["config.json"], sort_keys=True, default=str)
    try:
        memory = {name: join_name(family, "language", name, owned=False) for name in text.tensors}
    except KeyError:
        return None
    written = _written(family.cls, config, tuple(sorted(memory.values())))
    if written is None:
        return None
    in_memory = source.get("names") == "memory"  # a VLM whose files hold its in-memory names: placed, not saved
    renames = family.layout(source["layout"])
    text_name = {held: name for name, held in memory.items()}
    tensors: dict[str, LazyTensor] = {}
    for name, tensor in text.tensors.items():
        held = memory[name]
        renamed = in_memory or written[held]["renamed"]
        if not renamed and tuple(tensor.shape) != tuple(written[held]["shape"]):
            return None  # converted by the class's shapes: the text-only tensor must have them
        joined = tuple(written[held]["joined"])  # tensors written into the same files (Inkling's gate and up)
        if not in_memory and held != joined[0]:
            continue  # written with the first of them
        if any(h not in text_name for h in joined):
            return None
        parts = [text.tensors[text_name[h]] for h in joined]
        files = {held: written[held]["shape"]} if in_memory else written[held]["files"]
        group = None if renamed else _converted_together(family.cls, config, joined)
        for file_name, shape in files.items():
            where = split_name(family, rename(file_name, renames, to_memory=True))
            if where is None or where[0] != "language":
                return None
            tensors[where[1]] = tensor if renamed else combine(
                parts, lambda *loaded, f=file_name, g=group: g(f, *loaded), shape)
    return Component(text.name, text.arch, text.config, tensors, text.preprocess)


def _written(cls: str, config_json: str, held: tuple[str, ...]) -> dict | None:
    """in-memory name -> {"shape", "files": file name -> shape, "renamed": written as it is held, "joined": the
    names written into the same files, in order}: what the class's save path writes for each of `held`, passed
    through it on its own, or together with the others its converter joins it with (Inkling writes its shared
    experts' gate and up interleaved in one `shared_w13_weight`); None when the class lacks one of them or its save
    path cannot write them."""

    def compute() -> dict:
        from .hf_export import to_file_names

        model = class_conversions(cls, config_json)[0]
        state = model.state_dict()
        out = {}
        for name in held:
            if name not in state:
                return {"written": None}
            try:
                files = to_file_names(model, {name: state[name]})
            except Exception:  # noqa: BLE001  (a converter that needs the tensors it joins)
                return {"written": None}
            renamed = len(files) == 1 and next(iter(files.values())) is state[name]
            out[name] = {"shape": list(state[name].shape), "renamed": renamed,
                         "files": {f: list(t.shape) for f, t in files.items()}, "joined": [name]}
        for name in held:  # a file written for several names: written from all of them at once
            joined = [n for n in held if set(out[n]["files"]) & set(out[name]["files"])]
            if len(joined) > 1:
                files = to_file_names(model, {n: state[n] for n in joined})
                out[name].update(renamed=False, joined=joined, files={f: list(t.shape) for f, t in files.items()})
        return {"written": out}

    return _kept_on_disk("vlm-language-names-2", f"{cls}\n{config_json}\n" + "\n".join(held), compute)["written"]


def _converted_together(cls: str, config_json: str, held: tuple[str, ...]):
    """(file name, the loaded in-memory tensors `held`) -> that file tensor, as the class's save path writes it: the
    file tensors converted together (one per expert) are converted once while they are read in turn."""
    done: dict = {}

    def take(file_name: str, *loaded):
        if file_name not in done:
            from .hf_export import to_file_names

            done.clear()
            done.update(to_file_names(class_conversions(cls, config_json)[0], dict(zip(held, loaded))))
        return done.pop(file_name)

    return take


def as_text_only_language(vlm: Checkpoint, language: Component) -> Component | None:
    """`vlm`'s language component (`language`, its head made explicit where a merge needs it) under the in-memory
    names of its text-only class (which transformers loads), each file tensor read back through the VLM class's own
    load-time conversion: renamed, or joined (experts one per expert fused); None where one is read into another
    component."""
    family, source = vlm.family, vlm.source_config
    if source.get("names") == "memory":  # its files hold the in-memory names already
        return language
    config = json.dumps(source["config.json"], sort_keys=True, default=str)
    renames = family.layout(source["layout"])
    files = {rename(join_name(family, "language", n), renames, to_memory=False): n for n in language.tensors}
    loaded = _loaded(family.cls, config, tuple(sorted(files)))
    tensors: dict[str, LazyTensor] = {}
    for held, (shape, sources) in loaded.items():
        where = split_name(family, held)
        if shape is None or where is None or where[0] != "language":
            return None
        parts = [language.tensors[files[name]] for _, name in sources]
        patterns = [pattern for pattern, _ in sources]
        tensors[where[1]] = parts[0] if patterns == [None] else combine(
            parts, functools.partial(_fuse, family.cls, config, held, patterns), shape)
    return Component(language.name, language.arch, language.config, tensors, language.preprocess)


def _loaded(cls: str, config_json: str, names: tuple[str, ...]) -> dict:
    """in-memory name -> (shape, [[source pattern or None, file name], ...]): where the class's load-time conversion
    puts each of the file tensors `names`, in its order (gate before up, experts in order)."""

    def compute() -> dict:
        model, _, converters = class_conversions(cls, config_json)
        held = model.state_dict()
        plan = load_plan(cls, config_json, names)
        return {target: [list(held[target].shape) if target in held else None, _by_pattern(sources, converters)]
                for target, sources in plan.items()}

    return _kept_on_disk("vlm-language-loaded-3", f"{cls}\n{config_json}\n" + "\n".join(names), compute)
