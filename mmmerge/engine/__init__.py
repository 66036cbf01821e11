"""The merge engine: recipe -> plan (one task per output tensor) -> streaming executor.

    from mmmerge import merge
    merge("recipe.yml", "out/")                       # a mergekit config or a multimodal recipe
    merge({"merge_method": "linear", "models": [...]}, "out/", dry_run=True)
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..io.claim import writes_output
from .execute import execute
from .plan import Plan, TensorTask, plan_merge
from .recipe import Recipe, evaluate_setting, load_recipe


@writes_output(unless="dry_run", deferred_check=True)  # locked; checked once the plan names the inputs
def merge(recipe: str | Path | dict, out: str | Path, *, device: str = "cpu", seed: int | None = None,
          dry_run: bool = False, force: bool = False, quiet: bool = False, threads: int | None = None,
          offline: bool | None = None) -> Path | None:
    """Merge the models a recipe names into the transformers folder `out`.

    `recipe`: a YAML file path, YAML text, or a dict (a mergekit config as it is, or a multimodal recipe).
    `device`: where the math runs (cpu | cuda). `seed`: makes random methods (dare, della) reproducible,
    per tensor. `dry_run`: validate everything and print the plan, write nothing (returns None).
    `force`: replace a non-empty `out`. `threads`: torch CPU threads while merging. `offline`: models named by hub
    ID come from the local Hugging Face cache only (default: HF_HUB_OFFLINE); otherwise missing files download.
    Returns the output folder. Raises an `MMMergeError` (one line) on any invalid input.
    """
    import torch

    from .execute import check_output, resolve_device

    resolve_device(device)
    check_recipe_encoding(recipe)
    plan = plan_merge(recipe, seed=seed, offline=offline)
    check_output(plan, Path(out), force, data=[recipe_file(recipe)])
    for warning in plan.warnings:  # likely mistakes: shown even when quiet
        print(f"warning: {warning}", file=sys.stderr)
    if dry_run:
        if not quiet:
            print(plan.summary())
            print(f"dry run: nothing written to {out}")
        return None
    old_threads = torch.get_num_threads()
    if threads is not None:
        from ..validate import integer

        torch.set_num_threads(integer("threads", threads, low=1))
    try:
        if not quiet:
            print(plan.summary())
        return execute(plan, Path(out), device=device, force=force, quiet=quiet)
    finally:
        torch.set_num_threads(old_threads)


def recipe_file(recipe) -> Path | None:
    """The file a recipe is read from; None for a dict or YAML text."""
    if not isinstance(recipe, (str, Path)) or (isinstance(recipe, str) and "\n" in recipe):
        return None
    return Path(recipe)


def check_recipe_encoding(recipe) -> None:
    """A recipe file that is not UTF-8 text stops with one line naming it (not a UnicodeDecodeError traceback)."""
    if recipe_file(recipe) is None or not Path(recipe).is_file():
        return
    try:
        Path(recipe).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        from ..errors import RecipeError

        raise RecipeError(f"{recipe}: not UTF-8 text ({e.reason} at byte {e.start}); save the recipe as "
                          "UTF-8") from None


__all__ = ["merge", "plan_merge", "execute", "load_recipe", "evaluate_setting", "Plan", "TensorTask", "Recipe"]
