"""The `mmmerge` command. Bad input prints one `error:` line and exits 2; `--debug` shows the traceback."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from contextlib import contextmanager

from . import __version__
from .cli_flags import DEBUG, api_defaults, api_function, help_formatter
from .commands import COMMANDS, Command
from .errors import MMMergeError
from .signals import Terminated


def stitch_options(args):
    """The StitchOptions of a `stitch` command line: one flag per field (`--quiet` is `progress=False`)."""
    from .stitching.options import StitchOptions

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(StitchOptions) if f.name != "progress"}
    layer = values["vision_feature_layer"]
    values["vision_feature_layer"] = layer[0] if layer and len(layer) == 1 else layer
    return StitchOptions(**values, progress=not getattr(args, "quiet", False))


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in `commands.COMMANDS`, generated from its flags."""
    p = argparse.ArgumentParser(prog="mmmerge", description="Merge and stitch models into multimodal LLMs.")
    p.add_argument("--version", action="version", version=f"mmmerge {__version__}")
    DEBUG.add_to(p)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        s = sub.add_parser(command.name, help=command.help, description=command.help,
                           formatter_class=help_formatter(command.api, command.flags))
        groups = {dest: group for dests, required in ((command.one_of, True), (command.at_most_one, False)) if dests
                  for group in [s.add_mutually_exclusive_group(required=required)] for dest in dests}
        for f in command.flags:
            f.add_to(groups.get(f.dest, s))
        # `mmmerge eval ... --debug` works as well as `mmmerge --debug eval ...`
        DEBUG.but(default=argparse.SUPPRESS).add_to(s)
        s.set_defaults(command_row=command, **command.defaults)
    return p


def run(command: Command, args) -> None:
    """Call the command's function with each given flag as its keyword, then print its report."""
    quiet = args.quiet = bool(getattr(args, "quiet", False))
    kwargs = {f.dest: getattr(args, f.dest) for f in command.flags
              if f.api and f.dest != "quiet" and hasattr(args, f.dest)}
    if command.quiet == "quiet":
        kwargs["quiet"] = quiet
    elif command.quiet == "progress":
        kwargs["progress"] = not quiet
    for dest, value in api_defaults(command.api).items():  # what the command reads besides: every flag, given or not
        if not hasattr(args, dest):
            setattr(args, dest, value)
    if command.before is not None:
        kwargs = command.before(kwargs, args)
    fn = api_function(command.api)
    result = command.call(fn, kwargs, args) if command.call is not None else fn(**kwargs)
    if command.report is not None:
        command.report(result, args)


@contextmanager
def warnings_as_lines():
    """mmmerge's own warnings as `warning: <message>` lines on stderr, each time; other warnings as Python shows them."""
    import warnings

    from .errors import MMMergeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", MMMergeWarning)
        show = warnings.showwarning

        def line(message, category, *args, **kwargs):
            if issubclass(category, MMMergeWarning):
                print(f"warning: {message}", file=sys.stderr)
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = line
        yield


def cli_message(e: MMMergeError) -> str:
    """The error as the command line says it: the API's keyword spelling beside a flag, "(force=True)", goes."""
    import re

    return re.sub(r" \(\w+=True\)", "", str(e))


def main(argv: list[str] | None = None) -> int:
    from .failures import report
    from .signals import sigterm_raises
    from .terminal import printable

    args = build_parser().parse_args(argv)
    try:
        with warnings_as_lines(), sigterm_raises():
            run(args.command_row, args)
    except MMMergeError as e:
        if args.debug:
            raise
        print(f"error: {printable(cli_message(e))}", file=sys.stderr)
        return 2
    except (Exception, KeyboardInterrupt, Terminated) as e:  # environment faults and interrupts: one line; bugs
        if args.debug:
            raise
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
