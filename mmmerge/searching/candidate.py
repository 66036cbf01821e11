"""Candidates merged in memory: the merged model is built once, and each candidate's tensors are written into
it in place, with no checkpoint on disk.

The inputs are opened and checked once (one `Opener` for the whole search), and the recipe is parsed once: a
candidate whose recipe differs from the parsed one only in parameter values has them set in a copy of the parsed
form (engine/bind.py; another method or a parameter left out parses that shape once more). It plans over those
open checkpoints and runs each task as `mmmerge merge` runs it, so the weights a candidate holds are the ones
`mmmerge merge` of its recipe writes, bit for bit.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch

from ..adapters.families import family_named, rename
from ..adapters.hf_common import copy_side_files, transformers_bars
from ..adapters.hf_whole import COMPONENT as WHOLE, memory_names
from ..engine.bind import bind_values, differences
from ..engine.execute import SIDE_FILES_SKIPPED, resolve_device, run_task
from ..engine.finite import input_sources
from ..engine.opener import Opener
from ..engine.plan import Plan, build_plan
from ..engine.recipe import Recipe, parse_recipe
from ..errors import RecipeError
from ..eval.generate import ModelLoadError, load_processor


def _names_in_memory(plan: Plan, held: set[str]) -> dict[str, str]:
    """Output tensor name -> the model's own parameter name, through the family's file layouts."""
    names = [t.name for t in plan.tasks]
    family = family_named(plan.output_format) if plan.output_format not in ("hf", "whole") else None
    if all(n in held for n in names):
        return {n: n for n in names}
    if WHOLE in plan.components:  # a whole model's file names, as transformers renames them on load
        mapped = memory_names(plan.components[WHOLE].reference)
        if all(mapped.get(n) in held for n in names):
            return {n: mapped[n] for n in names}
    for layout in ("saved", "hub") if family is not None else ():
        mapped = {n: rename(n, family.layout(layout), to_memory=True) for n in names}
        if all(m in held for m in mapped.values()):
            return mapped
    missing = next(n for n in names if n not in held)
    raise RecipeError(f"output tensor {missing} has no place in the {plan.output_format} model built from the "
                      f"output config")


def _shape(recipe: dict) -> str:
    """The recipe with every value inside `parameters` blanked out: recipes of one shape differ only in those."""
    def blank(node, inside: bool):
        if isinstance(node, dict):
            return {k: blank(v, inside or k == "parameters") for k, v in node.items()}
        if isinstance(node, list):
            return [blank(v, inside) for v in node]
        return None if inside else node

    return json.dumps(blank(recipe, False), sort_keys=True, default=str)


class Candidates:
    """One model in memory that takes the weights of any candidate recipe of a search."""

    def __init__(self, folder: Path | None, *, device: str = "cpu", seed: int | None = None,
                 offline: bool | None = None):
        self.folder, self.seed = folder, seed
        self.device = resolve_device(device)
        self.opener = Opener(folder, offline=offline)
        self.model = None
        self.inputs: set[Path] = set()  # every checkpoint a planned candidate reads
        self.data: set[Path] = set()  # every other file one reads (statistics files)
        self.parsed: dict[str, tuple[dict, Recipe]] = {}  # recipe shape -> a recipe of it as written, parsed

    def build(self, recipe: dict) -> None:
        """The model in memory, shaped as `recipe`'s output (any candidate's: they write the same tensors)."""
        first = self.plan(recipe)
        self.names = {t.name for t in first.tasks}
        self.model, self.processor = self._build(first)
        params = dict(self.model.state_dict(keep_vars=True))
        self.targets = {n: params[m] for n, m in _names_in_memory(first, set(params)).items()}
        filled = {p.data_ptr() for p in self.targets.values()}
        unfilled = [n for n, p in params.items() if p.data_ptr() not in filled]
        if unfilled:
            raise RecipeError(f"the merged model's tensor {unfilled[0]} comes from no output tensor "
                              f"({len(unfilled)} such)")
        self.warnings = first.warnings

    def plan(self, recipe: dict) -> Plan:
        """The plan of one candidate's recipe, over the checkpoints opened once."""
        plan = build_plan(self.parse(recipe), seed=self.seed, opener=self.opener)
        self.inputs.update(plan.inputs)
        self.data.update(plan.data)
        return plan

    def parse(self, recipe: dict) -> Recipe:
        """`recipe` parsed: its parameter values set into the parsed form of an earlier recipe of the same shape
        (the same keys, lists and every value outside `parameters`), else parsed and kept for the next."""
        shape = _shape(recipe)
        if shape in self.parsed and "modules" not in recipe:  # a `modules:` recipe is rewritten as it is parsed
            written, parsed = self.parsed[shape]
            changes = differences(written, recipe)
            bound = bind_values(parsed, changes) if changes is not None else None
            if bound is not None:
                return bound
        parsed = parse_recipe(recipe, folder=self.folder)
        self.parsed[shape] = (copy.deepcopy(recipe), parsed)
        return parsed

    def _build(self, plan: Plan):
        """The output model (random weights, float32, as `eval` loads a merge) and its processor, from the
        output's config and side files, as `mmmerge merge` would write them."""
        from transformers import AutoConfig, AutoModelForImageTextToText

        with tempfile.TemporaryDirectory(prefix="mmmerge-candidate-") as tmp:
            tmp = Path(tmp)
            if plan.side_files_from is not None:
                copy_side_files(plan.side_files_from, tmp, skip=SIDE_FILES_SKIPPED)
            if plan.tokenizer is not None:
                plan.tokenizer.write(tmp)
            (tmp / "config.json").write_text(json.dumps(plan.config))
            if plan.preprocessor:
                (tmp / "preprocessor_config.json").write_text(json.dumps(plan.preprocessor))
            processor = load_processor(tmp)
            try:
                with transformers_bars(False):
                    config = AutoConfig.from_pretrained(tmp)
                    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
            except (ValueError, KeyError) as e:
                raise ModelLoadError(f"the merged model ({plan.output_format}) is no image-text-to-text model: "
                                     f"search scores candidates on images and questions ({e})") from e
        return model.to(self.device).eval(), processor

    def load(self, recipe: dict) -> Plan:
        """Merge the candidate of `recipe` into the model in memory (built on first use); returns its plan."""
        if self.model is None:
            self.build(recipe)
        plan = self.plan(recipe)
        if {t.name for t in plan.tasks} != self.names:  # a set: random methods plan the same tensors in mergekit's order
            raise RecipeError("a searched value changes which tensors the merge writes (e.g. a layer range); "
                              "search only values that keep the output's tensors")
        sources = input_sources(plan)
        with torch.no_grad():
            for task in plan.tasks:
                self.targets[task.name].copy_(run_task(task, self.device, sources=sources))
        return plan
