"""The `mmmerge` command. Bad input prints one `error:` line and exits 2; `--debug` shows the traceback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .errors import MMMergeError
from .io.writer import DEFAULT_SHARD_BYTES
from .eval.lmms.table import LMMS_TASKS
from .eval.tasks import TASKS
from .lora.combine import ALL_METHODS
from .projectors.fit import METHODS as LINEAR_FITS
from .signals import Terminated
from .stitching.fitting import FITS
from .stitching.options import StitchOptions, doc


def cmd_inspect(args) -> None:
    from .inspect import format_any, inspect_path

    s = inspect_path(args.path)
    print(json.dumps(s, indent=2) if args.json else format_any(s))


def cmd_convert(args) -> None:
    from .adapters import open_checkpoint
    from .adapters.hf_export import save_hf

    from .io import claim_output

    with claim_output(args.out, force=args.force, inputs=[args.path]):  # locked; never over the input
        ckpt = open_checkpoint(args.path)
        vision = ckpt.component(args.component)
        left_out = save_hf(vision, args.out, force=args.force)
    print(f"wrote {vision.arch} ({vision.num_params:,} parameters) from {ckpt.format} to {args.out}")
    for name in left_out:
        print(f"  not written (not held by {vision.arch}): {name}")


def cmd_methods(args) -> None:
    from .methods._describe import describe, summary

    print(describe(args.name) if args.name else summary())


def cmd_merge(args) -> None:
    from .engine import merge

    merge(args.recipe, args.out, device=args.device, seed=args.seed, dry_run=args.dry_run, force=args.force,
          quiet=args.quiet, threads=args.threads, offline=True if args.offline else None,
          out_shard_size=args.out_shard_size)


def cmd_moe(args) -> None:
    from .mixture import moe

    moe(args.config, args.out, random_seed=args.random_seed, device=args.device, force=args.force, quiet=args.quiet,
        i_understand_this_is_not_useful_without_training=args.i_understand_this_is_not_useful_without_training,
        offline=True if args.offline else None, out_shard_size=args.out_shard_size)


def cmd_calibrate(args) -> None:
    from .calibration import collect_statistics

    out = collect_statistics(args.model, args.data, args.out, device=args.device, batch_size=args.batch_size,
                             kinds=args.kinds, max_examples=args.limit, image_folder=args.image_folder,
                             force=args.force, progress=not args.quiet, max_image_pixels=args.max_image_pixels)
    if not args.quiet:
        print(f"wrote {args.kinds} statistics of {args.model} to {out}")


def stitch_options(args):
    """The StitchOptions of a `stitch` command line: one flag per field (`--quiet` is `progress=False`)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(StitchOptions) if f.name != "progress"}
    layer = values["vision_feature_layer"]
    values["vision_feature_layer"] = layer[0] if layer and len(layer) == 1 else layer
    return StitchOptions(**values, progress=not args.quiet)


def cmd_stitch(args) -> None:
    from .stitching import stitch

    report = stitch(args.vision, args.language, args.out, options=stitch_options(args))
    if not args.quiet:
        print("\n".join(report.lines()))


def cmd_extract_lora(args) -> None:
    from .lora.extract import extract_lora, format_table

    rows, missed = extract_lora(args.base, args.model, args.out, rank=args.rank, energy=args.energy,
                                component=args.component, device=args.device, force=args.force)
    if not args.quiet:
        print(format_table(rows))
    kept = sum(1 for r in rows if r.rank)
    print(f"wrote a LoRA of {kept} module(s) to {args.out}")
    if missed:
        print(f"note: {len(missed)} other tensor(s) differ and are not in the adapter (LoRA holds linear layers "
              f"only): {', '.join(missed[:5])}{' ...' if len(missed) > 5 else ''}")


def cmd_merge_loras(args) -> None:
    from .lora.combine import merge_loras

    ranks = merge_loras(args.adapters, args.out, method=args.method, weights=args.weights, density=args.density,
                        rank=args.rank, sign_method=args.majority_sign_method, seed=args.seed, force=args.force)
    print(f"wrote a {args.method} LoRA of {len(ranks)} module(s), rank {min(ranks.values())}"
          f"{'-' + str(max(ranks.values())) if max(ranks.values()) != min(ranks.values()) else ''}, to {args.out}")


def cmd_eval(args) -> None:
    import os

    from .eval import evaluate

    metrics = evaluate(args.model, args.task, questions=args.questions, data=args.data, annotations=args.annotations,
                       images=args.images, out=args.out, batch_size=args.batch_size, limit=args.limit,
                       device=args.device, max_new_tokens=args.max_new_tokens, prompt=args.prompt,
                       progress=not args.quiet, force=args.force, max_image_pixels=args.max_image_pixels)
    if not args.quiet and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        shown = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
        print(json.dumps(shown, indent=2))
        print(f"wrote predictions.json, metrics.json, samples.jsonl to {args.out}")


def cmd_eval_compare(args) -> None:
    from .eval.compare import compare

    print(compare(args.outs, chart=args.out, baseline=args.baseline, by=args.by, level=args.level,
                  resamples=args.resamples, seed=args.seed))
    if args.out is not None:
        print(f"\nchart: {args.out}")


def cmd_score(args) -> None:
    from .eval.lmms import score

    result = score(args.task, args.samples)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(result.summary()) if args.json else result.table())


def cmd_generate(args) -> None:
    from .eval.ask import generate, task_instruction

    instruction = task_instruction(args.task, args.instruction)
    if instruction:
        whose = f"the {args.task} task's, as eval adds it" if args.instruction is None else "--instruction"
        print(f"prompt: {args.prompt!r} + instruction {instruction!r} ({whose})", file=sys.stderr)
    answer = generate(args.model, args.image, args.prompt, instruction=instruction, task=args.task,
                      max_new_tokens=args.max_new_tokens, device=args.device,
                      stop_strings=["\n"] if args.one_line else (), max_image_pixels=args.max_image_pixels)
    if not answer.strip():
        print("note: the model answered nothing (its answer ended before any text: an end-of-sequence token"
              f"{' or the line end' if args.one_line or args.task else ''} came first)", file=sys.stderr)
    print(answer)


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, device=args.device, seed=args.seed, progress=not args.quiet, force=args.force)


def cmd_search(args) -> None:
    from .searching import search

    try:
        search(args.spec, args.out, device=args.device, trials=args.trials, timeout=args.timeout,
               storage=args.storage, worker=args.worker, write_model=args.write_model, force=args.force,
               quiet=args.quiet, offline=True if args.offline else None)
    except (KeyboardInterrupt, Terminated) as e:
        study = args.storage or Path(args.out) / "study.db"
        if args.storage or Path(study).exists():  # kept on purpose: the same command resumes it
            e.kept = f"the study in {study} keeps every finished trial: the same command resumes it"
        raise


def add_image_limit(s: argparse.ArgumentParser) -> None:
    from .images import DEFAULT_MAX_PIXELS

    s.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse larger images before decoding them (default: {DEFAULT_MAX_PIXELS:,})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmmerge", description="Merge and stitch models into multimodal LLMs.")
    p.add_argument("--version", action="version", version=f"mmmerge {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="detected format, components, architecture, parameters and dtypes; what a LoRA "
                                       "folder, an eval or search output or a statistics file holds")
    s.add_argument("path", type=Path)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("convert", help="a vision encoder (open_clip, timm, ...) into a transformers folder")
    s.add_argument("path", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--component", default="vision", choices=["vision", "language"])
    s.add_argument("--force", action="store_true", help="replace a previous mmmerge output in --out (nothing else)")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("merge", help="merge models from a recipe (a mergekit config, or one section per component)")
    s.add_argument("recipe", help="recipe YAML file")
    s.add_argument("--out", type=Path, required=True, help="output folder (a transformers model)")
    s.add_argument("--device", default="cpu", help="where the math runs: cpu or cuda (default: cpu; under torchrun: "
                                                  "each rank its own GPU)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for torch (torchrun starts each process "
                                                             "with 1)")
    s.add_argument("--seed", type=int, default=None, help="seed for random methods (dare, della)")
    s.add_argument("--offline", action="store_true",
                   help="models named by hub ID come from the local Hugging Face cache only (as HF_HUB_OFFLINE=1)")
    s.add_argument("--out-shard-size", default=DEFAULT_SHARD_BYTES, metavar="SIZE",
                   help="most bytes per weights file: 500M, 2G, 5B (billion) or a number (default: 5 GiB); under "
                        "torchrun the ranks split the files")
    s.add_argument("--dry-run", action="store_true", help="validate and print the plan; write nothing")
    s.add_argument("--force", action="store_true", help="replace a previous mmmerge output in --out (nothing else)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("moe", help="a mixture-of-experts model from dense fine-tunes of one base (a mergekit-moe "
                                   "config as it is): Mixtral, Qwen2-MoE, Qwen3-MoE or, from Qwen3-VL, "
                                   "Qwen3-VL-MoE; gates from prompts (with images for a VLM)")
    s.add_argument("config", help="mergekit-moe config YAML (base_model, experts, gate_mode, ...)")
    s.add_argument("--out", type=Path, required=True, help="output folder (a transformers model)")
    s.add_argument("--random-seed", type=int, default=None, help="seed of random gates and expert noise (overrides "
                                                                "the config's random_seed)")
    s.add_argument("--i-understand-this-is-not-useful-without-training", action="store_true",
                   help="allow experts that are all the same model (to train the result afterwards)")
    s.add_argument("--device", default="cpu", help="where the base runs for hidden gates: cpu or cuda (default: cpu)")
    s.add_argument("--offline", action="store_true", help="hub IDs from the local Hugging Face cache only")
    s.add_argument("--out-shard-size", default=DEFAULT_SHARD_BYTES, metavar="SIZE",
                   help="most bytes per weights file: 500M, 2G or a number (default: 5 GiB)")
    s.add_argument("--force", action="store_true", help="replace a previous mmmerge output in --out (nothing else)")
    s.add_argument("--quiet", action="store_true", help="no summary")
    s.set_defaults(func=cmd_moe)

    s = sub.add_parser("calibrate", help="statistics of a model on calibration data for the regmean and fisher merges")
    s.add_argument("model", type=Path, help="a transformers folder: a causal LM (text data) or an image-text-to-text "
                   "model with its processor (image questions)")
    s.add_argument("--data", type=Path, required=True, help="calibration JSONL: {\"image\", \"question\"} per line "
                   "(as eval's jsonl task) or text only ({\"question\"} or {\"text\"}); an answer is appended")
    s.add_argument("--out", type=Path, required=True, help="statistics file to write (safetensors), named by "
                   "`statistics:` in a recipe")
    s.add_argument("--kinds", default="gram,fisher", help="gram (regmean), fisher (fisher) or both (default: gram,fisher)")
    s.add_argument("--batch-size", type=int, default=8, help="examples per forward pass of the gram pass")
    s.add_argument("--limit", type=int, default=None, help="only the first N examples")
    s.add_argument("--image-folder", type=Path, help="where the JSONL's images are (default: the JSONL's folder)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    s.add_argument("--force", action="store_true", help="replace a statistics file mmmerge wrote (nothing else)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_image_limit(s)
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("stitch", help="vision encoder + projector + causal LLM -> one LLaVA checkpoint with its processor")
    s.add_argument("--vision", type=Path, required=True, help="vision encoder: open_clip, timm, transformers or a LLaVA")
    s.add_argument("--language", type=Path, required=True, help="causal LM folder with its tokenizer")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--projector", type=Path, help=doc("projector"))
    g.add_argument("--projector-type", help=doc("projector_type"))
    s.add_argument("--align-data", type=Path, help=doc("align_data"))
    s.add_argument("--image-folder", type=Path, help=doc("image_folder"))
    s.add_argument("--fit", choices=list(FITS), help=doc("fit"))
    s.add_argument("--vision-feature-layer", type=int, nargs="+", help=doc("vision_feature_layer"))
    s.add_argument("--transfer", action="store_true", help=doc("transfer"))
    s.add_argument("--projector-language", type=Path, help=doc("projector_language"))
    s.add_argument("--transfer-method", choices=LINEAR_FITS, help=doc("transfer_method"))
    s.add_argument("--alpha", type=float, help=doc("alpha"))
    s.add_argument("--train-steps", type=int, help=doc("train_steps"))
    s.add_argument("--lr", type=float, help=doc("lr"))
    s.add_argument("--batch-size", type=int, help=doc("batch_size"))
    s.add_argument("--device", help=doc("device"))
    s.add_argument("--dtype", help=doc("dtype"))
    s.add_argument("--seed", type=int, help=doc("seed"))
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--force", action="store_true", help="replace a previous mmmerge output in --out (nothing else)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_image_limit(s)
    s.set_defaults(func=cmd_stitch, **{f.name: f.default for f in dataclasses.fields(StitchOptions)
                                       if f.name != "progress"})  # the defaults are the options'
    s = sub.add_parser("extract-lora", help="a peft LoRA for BASE whose update is the truncated SVD of MODEL - BASE")
    s.add_argument("--base", type=Path, required=True, help="the base model (the adapter is for it)")
    s.add_argument("--model", type=Path, required=True, help="the fine-tuned or merged model")
    s.add_argument("--rank", type=int, default=None, help="rank per module (with --energy: the largest rank)")
    s.add_argument("--energy", type=float, default=None,
                   help="per module, the smallest rank keeping this fraction of squared singular values")
    s.add_argument("--component", default="language", choices=["language", "vision"])
    s.add_argument("--device", default="cpu", help="where the SVDs run: cpu or cuda")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--force", action="store_true", help="replace a previous mmmerge output in --out (nothing else)")
    s.add_argument("--quiet", action="store_true", help="no per-module table")
    s.set_defaults(func=cmd_extract_lora)
    s = sub.add_parser("methods", help="the merge methods, or one method's parameters (defaults, ranges) and paper")
    s.add_argument("name", nargs="?", help="a method's name (default: list them all)")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("merge-loras", help="one peft LoRA from several with the same base (peft's add_weighted_adapter)")
    s.add_argument("adapters", type=Path, nargs="+", help="peft LoRA folders")
    s.add_argument("--method", default="cat", choices=ALL_METHODS)
    s.add_argument("--weights", type=float, nargs="+", default=None, help="one per adapter (default: all 1)")
    s.add_argument("--density", type=float, default=None, help="fraction kept by ties, dare and magnitude_prune")
    s.add_argument("--rank", type=int, default=None, help="rank of svd methods (default: the largest input rank)")
    s.add_argument("--majority-sign-method", default="total", choices=["total", "frequency"])
    s.add_argument("--seed", type=int, default=None, help="seed for the dare methods")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--force", action="store_true", help="replace a previous mmmerge output in --out (nothing else)")
    s.set_defaults(func=cmd_merge_loras)

    s = sub.add_parser("eval", help="answer a VQA set or an lmms-eval benchmark with an image-text-to-text model and "
                                     "score it as the official script (or lmms-eval) does")
    s.add_argument("model", type=Path, help="a transformers image-text-to-text checkpoint folder (any family) with its processor")
    s.add_argument("--task", required=True, choices=list(dict.fromkeys([*TASKS, *LMMS_TASKS])),
                   help="mmmerge's VQA tasks read the official files; lmms-eval's tasks (mme, mmmu_val, ...; pope and "
                        "gqa with --data) read lmms-lab's parquet datasets")
    data = s.add_mutually_exclusive_group()
    data.add_argument("--questions", type=Path, help="the task's questions file (or JSONL / problems.json)")
    data.add_argument("--data", help="an lmms-eval task's dataset: a folder as huggingface_hub downloads it (parquet "
                                     "shards) or a dataset ID in the local Hugging Face cache (default: lmms-eval's)")
    s.add_argument("--annotations", type=Path, help="VQAv2 annotations JSON (omit for test-dev: predictions only)")
    s.add_argument("--images", type=Path, help="image folder (jsonl: default the JSONL's folder)")
    s.add_argument("--out", type=Path, required=True, help="folder for predictions.json, metrics.json, samples.jsonl")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--limit", type=int, default=None, help="only the first N questions")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    s.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's (16; lmms-eval's for its tasks)")
    s.add_argument("--prompt", default=None, help='prompt template with {question} (default: the task\'s LLaVA-1.5 one; '
                                                 'an lmms-eval task\'s whole prompt is its {question})')
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    s.add_argument("--force", action="store_true", help="replace a previous mmmerge output in --out (nothing else)")
    add_image_limit(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("eval-compare", help="scores of several `mmmerge eval` outputs with bootstrap intervals, "
                       "paired tests against a baseline, and a bar chart")
    s.add_argument("outs", type=Path, nargs="+", help="evaluation output folders, lmms-eval run folders or "
                   "<date>_samples_<task>.jsonl logs (paired by doc_id)")
    s.add_argument("--baseline", help="the folder (or its name) every other run is tested against (default: the first)")
    s.add_argument("--by", help="a samples.jsonl field to break scores down by: answer_type, question_type, category ...")
    s.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default: 0.95)")
    s.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples (default: 10000)")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    s.add_argument("--out", type=Path, default=None, help="bar chart PNG to write")
    s.set_defaults(func=cmd_eval_compare)

    s = sub.add_parser("score", help="rescore an lmms-eval sample log (--log_samples, lmms-eval 0.3) without a model, "
                                     "as lmms-eval's task code scores it")
    s.add_argument("samples", type=Path, help="the task's *_samples_*.jsonl: doc_id, doc, target, resps, filtered_resps")
    s.add_argument("--task", required=True, choices=list(LMMS_TASKS), help="the lmms-eval task name")
    s.add_argument("--json", action="store_true", help='one object: {"task", "headline", "metrics"}')
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("generate", help="ask a model one question about one image (its own processor and chat template)")
    s.add_argument("model", type=Path, help="an image-text-to-text checkpoint folder (any family `eval` runs)")
    s.add_argument("--image", type=Path, required=True, help="the image file")
    s.add_argument("--prompt", required=True, help="the question or instruction")
    s.add_argument("--task", choices=list(TASKS), default=None,
                   help="ask as `eval --task` does: its instruction after the prompt, its answer end")
    s.add_argument("--instruction", default=None,
                   help="text on the line after the prompt (default: the --task's own, else none; \"\" for none)")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--one-line", action="store_true", help="stop at the end of the first line, as `eval` does")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_image_limit(s)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("search", help="merge coefficients chosen by optuna, each candidate merged in memory and scored "
                                      "on a dev split; run again to resume")
    s.add_argument("spec", help="a recipe whose searched values are {search: [LOW, HIGH]} or {choice: [...]}, "
                                "with a `search:` section (tasks, budget, objective)")
    s.add_argument("--out", type=Path, required=True, help="output folder: study.db, best_recipe.yml, trials.csv, "
                                                          "history.png, importance.png, result.json")
    s.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each rank its own GPU)")
    s.add_argument("--trials", type=int, default=None, help="finished trials in all (overrides the spec's)")
    s.add_argument("--timeout", type=float, default=None, help="seconds this process takes trials for")
    s.add_argument("--storage", default=None, help="an optuna storage URL other processes share (default: "
                                                   "SQLite in --out)")
    s.add_argument("--worker", action="store_true", help="only take trials of the study in --storage (or --out); "
                                                        "another process writes the outputs")
    s.add_argument("--write-model", action="store_true", help="also write the best candidate to OUT/model")
    s.add_argument("--offline", action="store_true", help="hub IDs from the local Hugging Face cache only")
    s.add_argument("--force", action="store_true", help="start again in a previous mmmerge output (nothing else)")
    s.add_argument("--quiet", action="store_true", help="no line per trial")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("demo", help="the whole pipeline on a synthetic VQA world: base, specialists, merges, report")
    s.add_argument("--out", type=Path, default=Path("mmmerge-demo"), help="output folder (default: ./mmmerge-demo)")
    s.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="replace a previous mmmerge output in --out (nothing else)")
    s.add_argument("--quiet", action="store_true", help="no progress or table")
    s.set_defaults(func=cmd_demo)
    for command in sub.choices.values():  # `mmmerge eval ... --debug` works as well as `mmmerge --debug eval ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


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
            args.func(args)
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
