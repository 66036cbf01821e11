"""The `mmmerge` command. Bad input prints one `error:` line and exits 2; `--debug` shows the traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import MMMergeError


def cmd_inspect(args) -> None:
    from .adapters import open_checkpoint
    from .inspect import format_summary, summary

    s = summary(open_checkpoint(args.path))
    print(json.dumps(s, indent=2) if args.json else format_summary(s))


def cmd_convert(args) -> None:
    from .adapters import open_checkpoint
    from .adapters.hf_export import save_hf

    ckpt = open_checkpoint(args.path)
    vision = ckpt.component(args.component)
    left_out = save_hf(vision, args.out, force=args.force)
    print(f"wrote {vision.arch} ({vision.num_params:,} parameters) from {ckpt.format} to {args.out}")
    for name in left_out:
        print(f"  not written (not held by {vision.arch}): {name}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmmerge", description="Merge and stitch models into multimodal LLMs.")
    p.add_argument("--version", action="version", version=f"mmmerge {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="detected format, components, architecture, parameters and dtypes")
    s.add_argument("path", type=Path)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("convert", help="a vision encoder (open_clip, timm, ...) into a transformers folder")
    s.add_argument("path", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--component", default="vision", choices=["vision", "language"])
    s.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    s.set_defaults(func=cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MMMergeError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
