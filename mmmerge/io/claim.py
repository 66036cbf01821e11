"""Claiming an output folder for a whole run: the checks of guard.py, the lock of lock.py, the leftovers of dead
runs cleared (stale.py), all before the run does any work, so a second run on the same output stops at once.

    with claim_output(out, force=force, inputs=[model_a, model_b]):
        ...                                   # plan, train, compute
        with atomic_output_dir(out, force) as tmp:   # takes the same claim again, for free
            ...

    @writes_output(inputs=("base", "model"))   # the same, for a function with `out` and `force` parameters
    def extract_lora(base, model, out, *, force=False): ...
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from pathlib import Path
from typing import Callable, Iterable

from .guard import check_output_dir, check_output_path
from .lock import holds_lock, output_lock
from .stale import clear_stale


def secondary_rank() -> bool:
    """True in a process of a torchrun group other than rank 0: it reads but never writes the output."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return those created, innermost first."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing


@contextlib.contextmanager
def claim_output(out: Path, *, force: bool = False, inputs: Iterable = (), data: Iterable = (),
                 deferred_check: bool = False):
    """Check `out` (guard.check_output_dir), lock it for the block and clear what dead runs left beside it.
    Yields the output's resolved path. Folders created for it are removed again if the block writes nothing.
    `deferred_check`: only the path is checked here; the block checks the rest once it knows its inputs."""
    inputs, data = list(inputs), list(data)

    def check():
        if deferred_check:
            check_output_path(out)
        else:
            check_output_dir(out, force, inputs=inputs, data=data)

    check()
    target = Path(out).resolve()
    if secondary_rank() or holds_lock(target):
        yield target
        return
    created = _make_parents(target.parent)
    try:
        with output_lock(target):
            clear_stale(target)
            check()  # a dead run's output may have been put back
            yield target
    finally:
        for folder in created:  # innermost first; only empty ones go
            with contextlib.suppress(OSError):
                folder.rmdir()


def writes_output(*, inputs: tuple[str, ...] = (), data: tuple[str, ...] = (), out: str = "out",
                  force: str = "force", unless: str | None = None, deferred_check: bool = False) -> Callable:
    """Decorator: the function's whole call holds `claim_output` on its `out` argument, with the arguments named
    in `inputs` (models: the output may not be, hold or sit inside them) and `data` (files and folders read:
    the output may not be or hold them). When the argument named `unless` is true (a dry run) nothing is
    claimed. `deferred_check`: the function checks the output itself once it knows its inputs (merge: after
    planning); the claim checks only the path."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            paths = dict(force=bool(a.get(force, False)), inputs=[a.get(n) for n in inputs],
                         data=[a.get(n) for n in data])
            if unless is not None and a.get(unless):
                if not deferred_check:
                    check_output_dir(a[out], **paths)
                return fn(*args, **kwargs)
            with claim_output(a[out], deferred_check=deferred_check, **paths):
                return fn(*args, **kwargs)

        return call

    return wrap
