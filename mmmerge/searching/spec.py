"""A search spec: a recipe with searched values plus a `search:` section that says how to search.

    search:
      trials: 30                 # the budget: trials (all processes together), and/or `timeout` in seconds
      sampler: tpe               # tpe | cmaes | random (samplers.py)
      seed: 0
      objective: score           # score (dev-split task score) | agreement | entropy (label-free; objectives.py)
      tasks:
        - task: vqav2
          questions: dev/questions.json
          annotations: dev/annotations.json
          images: dev/images
          test: {questions: test/questions.json, annotations: test/annotations.json, images: test/images}
        # or one file split in two: `split: 0.5` (that share of the questions is dev, the rest test)
        - task: mmstar           # any lmms-eval task `mmmerge score` knows (`lmms-eval:gqa` for its gqa),
          questions: mmstar.jsonl  # from a JSONL of its documents, scored as lmms-eval scores them
        - task: mme              # or from lmms-lab's parquet folder (or a cached dataset ID): `data`
          data: MME
          split: 0.5             # by the dataset's question id: MME's pairs stay on one side

Paths are relative to the spec file's folder. The test split never chooses: it is scored once, for the best
candidate, after the search.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import RecipeError
from ..hub import is_hub_id
from ..eval.lmms.task import LmmsEvalTask
from ..eval.lmms.table import LMMS_TASKS
from ..eval.runner import check_image_headers
from ..eval.tasks import TASKS, get_task, read_task
from ..images import DEFAULT_MAX_PIXELS
from .objectives import OBJECTIVES
from .samplers import SAMPLERS
from .space import Dimension, check_read, find_dimensions


class Files(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions: Optional[str] = None
    data: Optional[str] = None  # an lmms-eval task's parquet folder or dataset ID (or JSONL of documents)
    annotations: Optional[str] = None
    images: Optional[str] = None


class TaskSpec(Files):
    task: str
    prompt: Optional[str] = None
    limit: Optional[int] = Field(None, ge=1)
    split: Optional[float] = Field(None, gt=0, lt=1)
    test: Optional[Files] = None


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trials: Optional[int] = Field(None, ge=1)
    timeout: Optional[float] = Field(None, gt=0)
    sampler: str = "tpe"  # a name in samplers.SAMPLERS
    seed: int = 0
    objective: str = "score"  # a name in objectives.OBJECTIVES
    agreement_step: float = Field(0.05, gt=0, le=0.5)  # the neighbour's offset, as a share of each range
    tasks: list[TaskSpec] = Field(default_factory=list)
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(16, ge=1)
    study: str = "mmmerge-search"
    merge_seed: Optional[int] = None  # the seed of random merge methods (dare, della), as `mmmerge merge --seed`
    max_image_pixels: Optional[int] = Field(DEFAULT_MAX_PIXELS, ge=1)  # larger images are refused undecoded; null: none


LMMS_PREFIX = "lmms-eval:"


def task_named(name: str, *, dataset: bool = False):
    """mmmerge's own task of that name, else the lmms-eval task (`lmms-eval:NAME`, NAME where mmmerge has no
    task of that name, or any NAME read from a `dataset`: `data:`), read from a JSONL of its documents or a
    parquet folder, scored as lmms-eval scores it."""
    plain = None if name in TASKS and not dataset else name
    lmms = name[len(LMMS_PREFIX):] if name.startswith(LMMS_PREFIX) else plain
    if lmms is None:
        return get_task(name)
    if lmms not in LMMS_TASKS and dataset and name in TASKS:
        raise RecipeError(f"search.tasks[{name}]: `data` is an lmms-eval task's dataset, and {name} is none; give its "
                          f"files as `questions` (and `annotations`, `images`)")
    if lmms not in LMMS_TASKS:
        raise RecipeError(f"search.tasks: unknown task {name!r}; choose one of {', '.join(TASKS)}, or an lmms-eval "
                          f"task ({', '.join(LMMS_TASKS)}; `{LMMS_PREFIX}NAME` where mmmerge has a task of that name)")
    return LmmsEvalTask(lmms)


def split_by_question(samples: list, share: float, key) -> tuple[list, list]:
    """`share` of the samples as dev, the rest test, by a hash of each one's question `key` (the same split
    whatever the file's order); samples sharing a key (MME's pairs, MMBench's circular copies) stay together."""
    keys = [hashlib.sha256(str(key(s)).encode()).hexdigest() for s in samples]
    ranked = sorted(range(len(samples)), key=lambda i: keys[i])
    cut = max(1, round(share * len(samples)))
    while cut < len(ranked) and keys[ranked[cut]] == keys[ranked[cut - 1]]:
        cut += 1
    dev = set(ranked[:cut])
    return [s for i, s in enumerate(samples) if i in dev], [s for i, s in enumerate(samples) if i not in dev]


class Split:
    """One task's dev and test questions."""

    def __init__(self, spec: TaskSpec, folder: Path | None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        def at(p):
            return None if p is None else str(Path(folder, p) if folder is not None else Path(p))

        def data_at(files):
            """A dataset: a path (relative to the spec's folder) where one exists, else a dataset ID as given."""
            where = at(files.data)
            return files.data if not Path(where).exists() and is_hub_id(files.data) else where

        if spec.test is not None and spec.split is not None:
            raise RecipeError(f"search.tasks[{spec.task}]: give `test` files or a `split`, not both")
        for part, files in (("", spec), ("test.", spec.test)):
            if files is not None and (files.questions is None) == (files.data is None):
                raise RecipeError(f"search.tasks[{spec.task}]: give {part}questions (files) or {part}data (an "
                                  f"lmms-eval task's parquet folder or dataset ID), one of them")
        self.task = task_named(spec.task, dataset=spec.data is not None)
        self.prompt = spec.prompt if spec.prompt is not None else self.task.prompt
        if "{question}" not in self.prompt:
            raise RecipeError(f"search.tasks[{spec.task}]: prompt {self.prompt!r} has no {{question}} placeholder")
        self.source = at(spec.questions) if spec.data is None else data_at(spec)
        given = [spec.questions, spec.data, spec.annotations, spec.images]
        if spec.test is not None:
            given += [spec.test.questions, spec.test.data, spec.test.annotations, spec.test.images]
        self.files = [Path(at(p)) for p in given if p is not None]  # what the search reads: an output may not hold it
        samples = read_task(self.task, self.source, at(spec.annotations), at(spec.images), spec.limit)
        self.test_source = self.source
        if spec.split is not None:
            self.dev, self.test = split_by_question(samples, spec.split, self.task.split_key)
        else:
            self.dev = samples
            self.test = []
            if spec.test is not None:
                self.test_source = at(spec.test.questions) if spec.test.data is None else data_at(spec.test)
                self.test = read_task(self.task, self.test_source, at(spec.test.annotations), at(spec.test.images))
        if not self.dev:
            raise RecipeError(f"search.tasks[{spec.task}]: no dev questions")
        check_image_headers(self.dev, self.source, max_pixels)  # every image's size, before anything is decoded
        check_image_headers(self.test, self.test_source, max_pixels)


class Spec:
    """The parsed spec: the recipe with its searched values, the settings, and the tasks' splits."""

    def __init__(self, data: dict, folder: Path | None, where: str, *, custom_objective: bool = False):
        if not isinstance(data, dict) or not isinstance(data.get("search"), dict):
            raise RecipeError(f"{where}: a search spec is a recipe with a `search:` section (tasks, budget, objective)")
        data = dict(data)
        try:
            self.settings = SearchSettings.model_validate(data.pop("search"))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise RecipeError(f"{where}: search.{loc}: {err['msg']}") from None
        if self.settings.trials is None and self.settings.timeout is None:
            raise RecipeError(f"{where}: search: give a budget, `trials` or `timeout` (seconds)")
        for key, registry in (("sampler", SAMPLERS), ("objective", OBJECTIVES)):
            try:
                registry.find(getattr(self.settings, key))
            except RecipeError as e:
                raise RecipeError(f"{where}: search.{key}: {e}") from None
        self.recipe, self.folder, self.where = data, folder, where
        self.dimensions: list[Dimension] = find_dimensions(data)
        try:
            check_read(self.dimensions, data)
        except RecipeError as e:
            raise RecipeError(f"{where}: {e}") from None
        self.splits = [Split(t, folder, self.settings.max_image_pixels) for t in self.settings.tasks]
        if not self.splits and not custom_objective:
            raise RecipeError(f"{where}: search.tasks: name at least one evaluation task with its dev questions")


def fingerprint(spec: Spec) -> str:
    """What makes two specs one search: the recipe with its searched values, the settings that change a trial's
    score (not the budget or the batch size), and the folder relative paths start from. A study keeps it, so a
    search resumes only with the spec that made it."""
    settings = spec.settings.model_dump(exclude={"trials", "timeout", "batch_size"})
    folder = str(spec.folder if spec.folder is not None else Path.cwd().absolute())
    text = json.dumps({"recipe": spec.recipe, "settings": settings, "folder": folder}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_spec(spec: str | Path | dict, *, custom_objective: bool = False) -> Spec:
    """A spec from a YAML file (paths relative to its folder) or a dict (relative to the working folder).
    `custom_objective`: the caller scores candidates itself, so the spec needs no tasks."""
    if isinstance(spec, dict):
        return Spec(spec, None, "spec", custom_objective=custom_objective)
    path = Path(spec)
    if not path.is_file():
        raise RecipeError(f"{path}: no such search spec file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not a valid YAML file ({str(e).splitlines()[0]})") from None
    return Spec(data, path.absolute().parent, str(path), custom_objective=custom_objective)
