"""The command line's flags as data. A flag shared by several commands (`--force`, `--quiet`, `--device`,
`--offline`, `--debug`, ...) is written here once; a command's own flags are written in its row of
`commands.COMMANDS`.

A flag passed to a command's function goes to the keyword of the same name (its `dest`), and only when it is
given: the function's own default is the default, written once, and `--help` reads it from the function's
signature (so the help never restates a default that could drift from the code).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .io.writer import DEFAULT_SHARD_BYTES


@dataclass(frozen=True)
class Flag:
    """One `add_argument`: its names and keywords. `api`: passed to the command's function as the keyword named
    by its dest (False: read by the command line alone). `none_means`: what the function does with None, for
    `--help` (`--device`: the GPU when there is one)."""

    names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    api: bool = True
    none_means: str | None = None

    @property
    def dest(self) -> str:
        if "dest" in self.options:
            return self.options["dest"]
        name = max(self.names, key=len)
        return name.lstrip("-").replace("-", "_")

    @property
    def positional(self) -> bool:
        return not self.names[0].startswith("-")

    def but(self, **options) -> "Flag":
        """This flag with some keywords changed (a command's own help or choices)."""
        return replace(self, options={**self.options, **options})

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        options = dict(self.options)
        if self.api and not self.positional and "default" not in options and not options.get("required"):
            options["default"] = argparse.SUPPRESS  # not given: the function's own default
        parser.add_argument(*self.names, **options)


def flag(*names: str, api: bool = True, none_means: str | None = None, **options) -> Flag:
    return Flag(names, options, api=api, none_means=none_means)


def api_function(path: str):
    """The function a command calls, from "package.module:function" (imported when the command runs, so that
    `mmmerge inspect` does not import the search's optuna)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def api_defaults(path: str) -> dict[str, Any]:
    """The keyword defaults of a command's function."""
    fn = api_function(path)
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def help_formatter(api: str | None, flags: tuple[Flag, ...]):
    """An argparse formatter class whose help of each flag ends with the function's default for it."""
    shown = {f.dest: f for f in flags if f.api and not f.positional}

    class WithDefaults(argparse.HelpFormatter):
        def _get_help_string(self, action):
            text = action.help or ""
            f = shown.get(action.dest)
            if api is None or f is None or "(default" in text or action.nargs == 0:
                return text
            value = api_defaults(api).get(action.dest, inspect.Parameter.empty)
            if value is inspect.Parameter.empty or (value is None and f.none_means is None):
                return text
            said = f.none_means if value is None else ",".join(value) if isinstance(value, tuple) else value
            return f"{text} (default: {said})".replace("%", "%%")

    return WithDefaults


def image_limit() -> Flag:
    from .images import DEFAULT_MAX_PIXELS

    return flag("--max-image-pixels", type=int, metavar="N",
                help=f"refuse larger images before decoding them (default: {DEFAULT_MAX_PIXELS:,})")


# ---- flags several commands share ----------------------------------------------------------------------------

DEBUG = flag("--debug", action="store_true", api=False, help="show tracebacks")
FORCE = flag("--force", action="store_true", help="replace a previous mmmerge output in --out (nothing else)")
QUIET = flag("--quiet", action="store_true", help="no progress bar or summary")  # see Command.quiet
DEVICE = flag("--device", none_means="cuda when available", help="where the arithmetic runs: cpu or cuda")
OFFLINE = flag("--offline", action="store_const", const=True,
               help="models named by hub ID come from the local Hugging Face cache only (as HF_HUB_OFFLINE=1)")
SEED = flag("--seed", type=int, help="seed of what is random")
OUT = flag("--out", type=Path, required=True, help="output folder")
JSON = flag("--json", action="store_true", api=False, help="machine-readable output")
BATCH_SIZE = flag("--batch-size", type=int, help="examples per forward pass")
LIMIT = flag("--limit", type=int, help="only the first N examples")
SHARD_SIZE = flag("--out-shard-size", metavar="SIZE",
                  help=f"most bytes per weights file: 500M, 2G, 5B (billion) or a number "
                       f"(default: {DEFAULT_SHARD_BYTES // 1024**3} GiB); under torchrun the ranks split the files")
