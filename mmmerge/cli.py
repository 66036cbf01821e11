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


def cmd_merge(args) -> None:
    from .engine import merge

    merge(args.recipe, args.out, device=args.device, seed=args.seed, dry_run=args.dry_run, force=args.force,
          quiet=args.quiet, threads=args.threads)


def cmd_stitch(args) -> None:
    from .stitch import stitch

    layer = args.vision_feature_layer
    report = stitch(args.vision, args.language, args.out, projector=args.projector, projector_type=args.projector_type,
                    align_data=args.align_data, image_folder=args.image_folder,
                    vision_feature_layer=layer[0] if layer and len(layer) == 1 else layer, fit=args.fit,
                    transfer=args.transfer, projector_language=args.projector_language,
                    transfer_method=args.transfer_method, train_steps=args.train_steps, lr=args.lr,
                    batch_size=args.batch_size, device=args.device, dtype=args.dtype, seed=args.seed,
                    force=args.force, progress=not args.quiet)
    if not args.quiet:
        print("\n".join(report.lines()))


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

    s = sub.add_parser("merge", help="merge models from a recipe (a mergekit config, or one section per component)")
    s.add_argument("recipe", help="recipe YAML file")
    s.add_argument("--out", type=Path, required=True, help="output folder (a transformers model)")
    s.add_argument("--device", default="cpu", help="where the math runs: cpu or cuda (default: cpu)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    s.add_argument("--seed", type=int, default=None, help="seed for random methods (dare, della)")
    s.add_argument("--dry-run", action="store_true", help="validate and print the plan; write nothing")
    s.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("stitch", help="vision encoder + projector + causal LLM -> one LLaVA checkpoint with its processor")
    s.add_argument("--vision", type=Path, required=True, help="vision encoder: open_clip, timm, transformers or a LLaVA")
    s.add_argument("--language", type=Path, required=True, help="causal LM folder with its tokenizer")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--projector", type=Path, help="a LLaVA folder, a projector file, or LLaVA's mm_projector.bin")
    g.add_argument("--projector-type", help="a new projector: linear, identity, mlp2x_gelu, ...")
    s.add_argument("--align-data", type=Path, help="image-caption JSONL to fit or train the projector on")
    s.add_argument("--image-folder", type=Path, help="where the JSONL's images are (default: the JSONL's folder)")
    s.add_argument("--fit", choices=["ridge", "procrustes", "train"],
                   help="with --align-data: closed-form fit (linear) or training (default: ridge for linear, else train)")
    s.add_argument("--vision-feature-layer", type=int, nargs="+", help="hidden state(s) fed to the projector (default: "
                   "the projector's own, else -2)")
    s.add_argument("--transfer", action="store_true", help="re-target the projector at this LLM via shared tokens")
    s.add_argument("--projector-language", type=Path, help="the LLM the projector was made for (implies --transfer)")
    s.add_argument("--transfer-method", default="ridge", choices=["ridge", "procrustes"])
    s.add_argument("--train-steps", type=int, default=100)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    s.add_argument("--dtype", default=None, help="cast all weights (float16, bfloat16, float32); default: keep")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(func=cmd_stitch)
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
