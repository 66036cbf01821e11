"""The model card (README.md) of a merged model, in the form the Hugging Face hub shows.

A merged folder without a card says nothing about where it came from once it is copied or uploaded. The card
has the hub's YAML front matter (`base_model`, `library_name: transformers`, `tags: [merge, mmmerge, METHOD]`),
then the method with its paper, each component's inputs (hub ID and revision where the folder is a hub
download, else its path relative to the output folder), the recipe as written and the mmmerge version. `mmmerge eval` adds a row per task to the card's
evaluation table, so the results travel with the model.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import yaml

from . import __version__
from .errors import MMMergeWarning
from .io.atomic import atomic_write_text
from .methods import get_method

EVAL_START, EVAL_END = "<!-- mmmerge-eval:start -->", "<!-- mmmerge-eval:end -->"
EVAL_HEADER = "| task | questions | n | metric | score |\n|---|---|---:|---|---:|"
HUB_CACHE = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<rev>[0-9a-f]{7,40})")


def hub_origin(path: str) -> tuple[str | None, str | None]:
    """(hub repo ID, revision) of a folder downloaded from the hub, where its location tells: a snapshot in the
    hub cache (`models--ORG--NAME/snapshots/REV`), or a `local_dir` download (its metadata holds the commit)."""
    m = HUB_CACHE.search(Path(path).absolute().as_posix())
    if m:
        return f"{m['org']}/{m['name']}", m["rev"]
    meta = sorted((Path(path) / ".cache" / "huggingface" / "download").glob("*.metadata")) if Path(path).is_dir() else []
    if meta:
        first = meta[0].read_text().splitlines()
        return None, first[0].strip() if first else None
    return None, None


def _inputs(source: str) -> list[str]:
    """The folders of one input: `BASE+LORA` names two."""
    return [s for s in source.split("+") if s] if not Path(source).exists() else [source]


def local_name(folder: str, out) -> str:
    """A local input as the card names it: its path relative to the output folder (an absolute path names a
    folder on the machine that merged, which the card's readers do not have)."""
    try:
        return Path(os.path.relpath(Path(folder).absolute(), Path(out).absolute())).as_posix()
    except ValueError:  # another drive (Windows): no relative path
        return Path(folder).name


def describe_input(source: str, out) -> str:
    parts = []
    for folder in _inputs(source):
        repo, rev = hub_origin(folder)
        where = f"[{repo}](https://huggingface.co/{repo})" if repo else f"`{local_name(folder, out)}`"
        parts.append(where + (f" (revision `{rev}`)" if rev else ""))
    return " + LoRA ".join(parts)


def method_line(method: str) -> str:
    """The method with its paper's title, linked where it has a reference (both declared by the method)."""
    spec = get_method(method)
    return f"`{method}`: " + (f"[{spec.title}]({spec.reference})" if spec.reference else spec.title)


def _recipe_yaml(plan) -> str:
    text = plan.recipe.text
    if not text:
        text = yaml.safe_dump(plan.recipe.model_dump(exclude_none=True, exclude={"text", "folder"}), sort_keys=False)
    return text.rstrip("\n")


def front_matter(plan, out) -> dict:
    bases = []
    for c in plan.components.values():
        for source in c.sources:
            for folder in _inputs(source):
                repo, _ = hub_origin(folder)
                bases.append(repo or local_name(folder, out))
    methods = [c.how.removeprefix("merge ") for c in plan.components.values() if c.how.startswith("merge ")]
    meta = {"base_model": list(dict.fromkeys(bases)), "library_name": "transformers",
            "tags": list(dict.fromkeys(["merge", "mmmerge", *methods]))}
    if plan.output_format not in ("hf", "whole"):
        meta["pipeline_tag"] = "image-text-to-text"
    return meta


def written_as(output_format: str) -> str:
    if output_format == "hf":
        return ""
    if output_format == "whole":
        return ", of whole models (tensor by tensor, each under its own name)"
    return f", written as a `{output_format}` checkpoint"


def model_card(plan, out) -> str:
    """The README.md text of the merge `plan` written to `out`."""
    lines = ["---", yaml.safe_dump(front_matter(plan, out), sort_keys=False).rstrip("\n"), "---", "",
             f"# {Path(out).name}", "",
             f"A merge made with mmmerge {__version__}" + written_as(plan.output_format) + ".", ""]
    same: dict[tuple, list[str]] = {}  # components made the same way from the same inputs are listed once
    for c in plan.components.values():
        same.setdefault((c.how, tuple(c.sources), c.has_base), []).append(c.name)
    for (how, sources, has_base), names in same.items():
        what = ", ".join(f"**{n}**" for n in names)
        if how == "copy":
            lines.append(f"- {what}: copied from {describe_input(sources[0], out)}")
            continue
        lines.append(f"- {what}: {method_line(how.removeprefix('merge '))} of")
        for i, source in enumerate(sources):
            lines.append(f"  - {'base: ' if i == 0 and has_base else ''}{describe_input(source, out)}")
    lines += ["", "## Recipe", "", "```yaml", _recipe_yaml(plan), "```", "", "## Evaluation", "", EVAL_START,
              "No evaluation yet: `mmmerge eval` adds a row per task here.", EVAL_END, ""]
    return "\n".join(lines)


def is_mmmerge_card(text: str) -> bool:
    return EVAL_START in text and EVAL_END in text


def with_eval(text: str, run: dict, metrics: dict) -> str:
    """The card with the row of this evaluation (task and questions file) added or replaced."""
    headline = run.get("headline")
    score = metrics.get(headline)
    if not isinstance(score, (int, float)):
        return text
    row = (f"| {run.get('task', '?')} | `{Path(str(run.get('questions_file', '?'))).name}` | "
           f"{run.get('questions', '?')} | {headline} | {score:.2f} |")
    start, end = text.index(EVAL_START) + len(EVAL_START), text.index(EVAL_END)
    key = row.split(" | ")[:2]
    rows = [r for r in text[start:end].splitlines() if r.startswith("| ") and not r.startswith("| task |")
            and r.split(" | ")[:2] != key]
    return text[:start] + "\n" + EVAL_HEADER + "\n" + "\n".join(rows + [row]) + "\n" + text[end:]


def record_eval(model, run: dict, metrics: dict) -> bool:
    """Add an evaluation to the card of a model folder mmmerge wrote (other folders are left alone); True when
    the card was updated. A card that cannot be written gives a warning, never an error."""
    card = Path(model) / "README.md"
    try:
        text = card.read_text()
    except OSError:
        return False
    if not is_mmmerge_card(text):
        return False
    try:
        atomic_write_text(card, with_eval(text, run, metrics))
    except OSError as e:
        warnings.warn(f"{card}: could not add the evaluation to the model card ({e})", MMMergeWarning, stacklevel=2)
        return False
    return True
