"""Merging under torchrun: the ranks split the output's shard files; rank 0 writes the rest and renames.

    torchrun --nproc-per-node 2 -m mmmerge merge recipe.yml --out merged --out-shard-size 2G

Every rank plans the same merge (planning reads no tensor data and gives the same plan every time), so the
shard files, their names and their headers are a one-process merge's. Whole files go to ranks, balanced by
bytes; each rank merges and writes only its own files, into rank 0's temporary folder (across nodes: a shared
file system, mounted at the same path). Once every rank has written its files, rank 0 writes the index, config
and side files and renames the folder into place. The ranks agree after each step (an all-reduced flag), so a
rank that fails makes every rank stop with one line, and rank 0 removes the temporary folder.
"""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from ..errors import RankFailedError, RecipeError
from ..eval.distributed import Ranks, broadcast
from ..io import atomic_output_dir
from ..io.writer import shard_layout, shard_metadata, write_index, write_shard
from .execute import metadata, output_tensors, progress_bar, resolve_device, write_other_files
from .plan import Plan

T = TypeVar("T")

# How long a rank waits for the others at a step before it stops. A rank that dies is noticed at once (its
# connections close); this only ends the wait for one that is alive but stuck (a hung file system). A rank
# that finishes its files early waits here for the others, so it is generous.
TIMEOUT = timedelta(hours=2)


def together(ranks: Ranks, step: Callable[[], T]) -> T:
    """Run `step` on this rank and learn whether it succeeded on every rank. This rank's own error is raised as
    it is; another rank's failure raises RankFailedError naming that rank (whose own line says why)."""
    if ranks.world == 1:
        return step()
    error, result = None, None
    try:
        result = step()
    except Exception as e:  # noqa: BLE001 - re-raised below, once the other ranks know
        error = e
    failed = torch.zeros(ranks.world, dtype=torch.int32)
    failed[ranks.rank] = int(error is not None)
    try:
        dist.all_reduce(failed)
    except RuntimeError as e:  # a rank died, or did not answer within TIMEOUT
        if error is not None:
            raise error from None
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RankFailedError(f"rank {ranks.rank}: lost contact with the other ranks ({reason}); nothing was "
                              "written") from None
    if error is not None:
        raise error
    others = [str(r) for r in failed.nonzero().flatten().tolist()]
    if others:
        raise RankFailedError(f"rank {ranks.rank}: stopped because rank {', '.join(others)} failed (its own error "
                              "line says why); nothing was written")
    return result


def assign_files(sizes: list[int], world: int) -> list[int]:
    """The rank that writes each file: the largest file first, each to the rank with the fewest bytes so far
    (the lowest such rank), so the ranks finish together as nearly as whole files allow."""
    load = [0] * world
    owners = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += sizes[i]
    return owners


def check_split(plan: Plan) -> None:
    """Refuse a plan whose tensors cannot be merged apart: seeded random methods drawing mergekit's one random
    stream take their draws tensor after tensor, so one process must make them all."""
    shared = next((t for t in plan.tasks if t.stream is not None), None)
    if shared is not None:
        raise RecipeError(f"under torchrun, a seeded {shared.method.name} merge cannot be split: it draws mergekit's "
                          "one random stream tensor after tensor; add `random_stream: per_tensor` to the recipe "
                          "(each tensor seeded from its name) or merge in one process")


def execute_ranks(plan: Plan, out: Path, ranks: Ranks, *, force: bool = False, quiet: bool = False,
                  max_shard_bytes: int) -> Path:
    """Write the planned output folder together with the other ranks (see the module docstring)."""
    out = Path(out)
    tensors = output_tensors(plan, resolve_device(ranks.device))
    layout = shard_layout(tensors, max_shard_bytes)
    sizes = [sum(tensors[n].nbytes for n in names) for names in layout.values()]
    owners = assign_files(sizes, ranks.world)
    mine = [file for file, owner in zip(layout, owners) if owner == ranks.rank]
    quiet = quiet or not ranks.main
    if not quiet and len(layout) < ranks.world:
        print(f"note: {len(layout)} output file(s) for {ranks.world} ranks, so {ranks.world - len(layout)} rank(s) "
              "have nothing to write; a smaller --out-shard-size splits the work finer")
    bar, on_tensor = progress_bar(sum(s for s, o in zip(sizes, owners) if o == ranks.rank),
                                  sum(len(layout[f]) for f in mine), quiet)
    start = time.perf_counter()

    def open_folder() -> Path | None:
        return stack.enter_context(atomic_output_dir(out, force)) if ranks.main else None

    def write_mine(tmp: Path) -> None:
        for file in mine:
            write_shard(tmp / file, layout[file], tensors, shard_metadata(metadata()), on_tensor)

    def write_rest(tmp: Path) -> None:
        if ranks.main:
            write_index(tmp, layout, tensors)
            write_other_files(plan, tmp, out)

    try:
        with contextlib.ExitStack() as stack:  # rank 0: the temporary folder, removed on any failure
            folder = together(ranks, open_folder)
            tmp = Path(broadcast(str(folder) if folder else None, ranks))
            together(ranks, lambda: write_mine(tmp))
            together(ranks, lambda: write_rest(tmp))
            together(ranks, stack.close)  # rank 0 renames the folder into place
    finally:
        bar.close()
    if not quiet:
        secs = time.perf_counter() - start
        print(f"wrote {len(tensors)} tensors ({plan.nbytes / 2**20:,.1f} MiB) to {out} in {secs:.1f} s "
              f"({ranks.world} ranks)")
    return out
