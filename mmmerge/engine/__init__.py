"""The merge engine: recipe -> plan (one task per output tensor) -> streaming executor.

    from mmmerge import merge
    merge("recipe.yml", "out/")                       # a mergekit config or a multimodal recipe
    merge({"merge_method": "linear", "models": [...]}, "out/", dry_run=True)
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ..io.claim import claim_output, writes_output
from ..io.writer import DEFAULT_SHARD_BYTES
from .execute import execute
from .plan import Plan, TensorTask, plan_merge
from .parameters import evaluate_setting
from .recipe import Recipe, load_recipe


def merge(recipe: str | Path | dict, out: str | Path, *, device: str = "cpu", seed: int | None = None,
          dry_run: bool = False, force: bool = False, quiet: bool = False, threads: int | None = None,
          offline: bool | None = None, out_shard_size: int | str = DEFAULT_SHARD_BYTES,
          across_ranks: bool = True) -> Path | None:
    """Merge the models a recipe names into the transformers folder `out`.

    `recipe`: a YAML file path, YAML text, or a dict (a mergekit config as it is, or a multimodal recipe).
    `device`: where the math runs (cpu | cuda; under torchrun cuda is each rank's own GPU). `seed`: makes random
    methods (dare, della) reproducible, per tensor. `dry_run`: validate everything and print the plan, write
    nothing (returns None).
    `force`: replace a non-empty `out`. `threads`: torch CPU threads while merging. `offline`: models named by hub
    ID come from the local Hugging Face cache only (default: HF_HUB_OFFLINE); otherwise missing files download.
    `out_shard_size`: the most bytes in one weights file (an integer, or "500M", "2G").
    `across_ranks`: under torchrun (WORLD_SIZE > 1) every rank calls `merge` and the ranks split the output's
    weights files (engine/ranks.py); False merges in this process alone (a search's rank 0 writing its best model).
    Returns the output folder. Raises an `MMMergeError` (one line) on any invalid input.
    """
    from ..eval.distributed import Ranks, setup, teardown
    from ..validate import byte_size
    from .execute import resolve_device
    from .ranks import TIMEOUT, together

    resolve_device(device)
    options = dict(seed=seed, dry_run=dry_run, force=force, quiet=quiet, threads=threads,
                   offline=offline, max_shard_bytes=byte_size("out_shard_size", out_shard_size))
    ranks = setup(device, backend="gloo", timeout=TIMEOUT) if across_ranks else Ranks(device=device)
    if ranks.world == 1:
        return _merge(recipe, out, ranks=ranks, **options)
    try:
        with contextlib.ExitStack() as stack:  # rank 0 takes the output's lock (claim.py); all learn if it could
            together(ranks, lambda: None if dry_run else stack.enter_context(
                claim_output(Path(out), force=force, deferred_check=True)))
            return _merge(recipe, out, ranks=ranks, **options)
    finally:
        teardown(ranks)


@writes_output(unless="dry_run", deferred_check=True)  # locked; checked once the plan names the inputs
def _merge(recipe, out, *, seed: int | None, dry_run: bool, force: bool, quiet: bool,
           threads: int | None, offline: bool | None, max_shard_bytes: int, ranks) -> Path | None:
    import torch

    from .execute import check_output
    from .ranks import check_split, execute_ranks, together

    def prepare() -> Plan:
        check_recipe_encoding(recipe)
        plan = plan_merge(recipe, seed=seed, offline=offline)
        check_output(plan, Path(out), force, data=[recipe_file(recipe)])
        if ranks.world > 1:
            check_split(plan)
        return plan

    plan = together(ranks, prepare)
    if ranks.main:
        for warning in plan.warnings:  # likely mistakes: shown even when quiet
            print(f"warning: {warning}", file=sys.stderr)
    quiet = quiet or not ranks.main
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
        if ranks.world > 1:
            return execute_ranks(plan, Path(out), ranks, force=force, quiet=quiet, max_shard_bytes=max_shard_bytes)
        return execute(plan, Path(out), device=ranks.device, force=force, quiet=quiet, max_shard_bytes=max_shard_bytes)
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
