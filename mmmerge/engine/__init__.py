"""The merge engine: recipe -> plan (one task per output tensor) -> streaming executor.

    from mmmerge import merge
    merge("recipe.yml", "out/")                       # a mergekit config or a multimodal recipe
    merge({"merge_method": "linear", "models": [...]}, "out/", dry_run=True)
"""

from __future__ import annotations

import sys
from pathlib import Path

from .execute import execute
from .plan import Plan, Task, plan_merge
from .recipe import Recipe, evaluate_setting, load_recipe


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

    from ..io import check_output_dir
    from .execute import check_output, resolve_device

    resolve_device(device)
    check_output_dir(Path(out), force)
    plan = plan_merge(recipe, seed=seed, offline=offline)
    check_output(plan, Path(out), force)
    for warning in plan.warnings:  # likely mistakes: shown even when quiet
        print(f"warning: {warning}", file=sys.stderr)
    if dry_run:
        if not quiet:
            print(plan.summary())
            print(f"dry run: nothing written to {out}")
        return None
    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            from ..errors import MMMergeError

            raise MMMergeError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        if not quiet:
            print(plan.summary())
        return execute(plan, Path(out), device=device, force=force, quiet=quiet)
    finally:
        torch.set_num_threads(old_threads)


__all__ = ["merge", "plan_merge", "execute", "load_recipe", "evaluate_setting", "Plan", "Task", "Recipe"]
