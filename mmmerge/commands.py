"""Every `mmmerge` command as data: its name, help, the function it calls and the flags it takes.

A command calls its Python API function (`api`, "module:function") with each given flag as the keyword of the
same name, so the command line and the API are one interface: a flag is added in one place, its row here (or
once in cli_flags.py when several commands share it), and its default is the function's. `report` prints what
the function returned.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cli_flags import (BATCH_SIZE, DEVICE, FORCE, JSON, LIMIT, OFFLINE, OUT, QUIET, SEED, SHARD_SIZE, Flag, flag,
                        image_limit)
from .eval.lmms.table import LMMS_TASKS
from .eval.tasks import TASKS
from .lora.combine import ALL_METHODS


@dataclass(frozen=True)
class Command:
    """`quiet`: the keyword `--quiet` sets on the function, "quiet" (True) or "progress" (False); None when only
    `report` reads it. `before`: turns the parsed flags into the call's keywords where one is not a flag as it
    is (stitch's options object, generate's instruction)."""

    name: str
    help: str
    api: str
    flags: tuple[Flag, ...]
    report: Callable[[Any, Any], None] | None = None
    quiet: str | None = "quiet"
    before: Callable[[dict, Any], dict] | None = None
    call: Callable[[Callable, dict, Any], Any] | None = None  # calls the function (default: fn(**keywords))
    defaults: dict = field(default_factory=dict)  # parser defaults a command sets (stitch: its options')
    one_of: tuple[str, ...] = ()  # dests of flags of which exactly one must be given
    at_most_one: tuple[str, ...] = ()  # dests of flags of which one may be given


# ---- reports: what each command prints of its function's result ---------------------------------------------

def _print_inspect(summary, args) -> None:
    from .inspect import format_any

    print(json.dumps(summary, indent=2) if args.json else format_any(summary))


def _print_conversion(left_out, args) -> None:
    config = json.loads((Path(args.out) / "config.json").read_text())
    arch = (config.get("architectures") or [config.get("model_type", "model")])[0]
    print(f"wrote {arch} from {args.path} to {args.out}")
    for name in left_out:
        print(f"  not written (not held by {arch}): {name}")


def _print_text(text, args) -> None:
    print(text)


def _print_statistics(out, args) -> None:
    if not args.quiet:
        kinds = args.kinds if isinstance(args.kinds, str) else ",".join(args.kinds)
        print(f"wrote {kinds} statistics of {args.model} to {out}")


def _print_stitch(report, args) -> None:
    if not args.quiet:
        print("\n".join(report.lines()))


def _print_lora(result, args) -> None:
    from .lora.extract import format_table

    rows, missed = result
    if not args.quiet:
        print(format_table(rows))
    print(f"wrote a LoRA of {sum(1 for r in rows if r.rank)} module(s) to {args.out}")
    if missed:
        print(f"note: {len(missed)} other tensor(s) differ and are not in the adapter (LoRA holds linear layers "
              f"only): {', '.join(missed[:5])}{' ...' if len(missed) > 5 else ''}")


def _print_lora_merge(ranks, args) -> None:
    low, high = min(ranks.values()), max(ranks.values())
    print(f"wrote a {args.method} LoRA of {len(ranks)} module(s), rank {low}"
          f"{'-' + str(high) if high != low else ''}, to {args.out}")


def _print_metrics(metrics, args) -> None:
    if not args.quiet and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
        print(f"wrote predictions.json, metrics.json, samples.jsonl to {args.out}")


def _print_comparison(text, args) -> None:
    print(text)
    if getattr(args, "chart", None) is not None:
        print(f"\nchart: {args.chart}")


def _print_scores(result, args) -> None:
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(result.summary()) if args.json else result.table())


def _print_answer(answer, args) -> None:
    if not answer.strip():
        print("note: the model answered nothing (its answer ended before any text: an end-of-sequence token"
              f"{' or the line end' if args.one_line or args.task else ''} came first)", file=sys.stderr)
    print(answer)


# ---- keywords that are not a flag as it is -------------------------------------------------------------------

def _stitch_options(kwargs: dict, args) -> dict:
    from .cli import stitch_options

    return {"vision": kwargs["vision"], "language": kwargs["language"], "out": kwargs["out"],
            "options": stitch_options(args)}


def _ask_as_the_task_does(kwargs: dict, args) -> dict:
    from .eval.ask import task_instruction

    kwargs["instruction"] = task_instruction(args.task, args.instruction)
    if kwargs["instruction"]:
        whose = f"the {args.task} task's, as eval adds it" if args.instruction is None else "--instruction"
        print(f"prompt: {args.prompt!r} + instruction {kwargs['instruction']!r} ({whose})", file=sys.stderr)
    kwargs["stop_strings"] = ["\n"] if args.one_line else ()
    return kwargs


def _search_keeping_the_study(search, kwargs: dict, args):
    """A search stopped by Ctrl-C or SIGTERM says that its study keeps every finished trial."""
    from .signals import Terminated

    try:
        return search(**kwargs)
    except (KeyboardInterrupt, Terminated) as e:
        study = args.storage or Path(args.out) / "study.db"
        if args.storage or Path(study).exists():  # kept on purpose: the same command resumes it
            e.kept = f"the study in {study} keeps every finished trial: the same command resumes it"
        raise


def _stitch_flags() -> tuple[Flag, ...]:
    from .projectors.fit import METHODS as LINEAR_FITS
    from .stitching.fitting import FITS
    from .stitching.options import doc

    own = lambda name, **options: flag("--" + name.replace("_", "-"), api=False, help=doc(name), **options)  # noqa: E731
    return (
        flag("--vision", type=Path, required=True, help="vision encoder: open_clip, timm, transformers or a LLaVA"),
        flag("--language", type=Path, required=True, help="causal LM folder with its tokenizer"),
        own("projector", type=Path), own("projector_type"), own("align_data", type=Path),
        own("image_folder", type=Path), own("fit", choices=list(FITS)), own("vision_feature_layer", type=int, nargs="+"),
        own("transfer", action="store_true"), own("projector_language", type=Path),
        own("transfer_method", choices=LINEAR_FITS), own("alpha", type=float), own("train_steps", type=int),
        own("lr", type=float), own("batch_size", type=int), own("device"), own("dtype"), own("seed", type=int),
        OUT, FORCE, QUIET, image_limit(),
    )


def _stitch_defaults() -> dict:
    """Every stitch flag's default is its StitchOptions field's (`--quiet` is progress=False)."""
    import dataclasses

    from .stitching.options import StitchOptions

    return {f.name: f.default for f in dataclasses.fields(StitchOptions) if f.name != "progress"}


COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("inspect", "detected format, components, architecture, parameters and dtypes; what a LoRA folder, an "
                       "eval or search output or a statistics file holds",
            "mmmerge.inspect:inspect_path", (flag("path", type=Path), JSON), _print_inspect, quiet=None),
    Command("convert", "a vision encoder (open_clip, timm, ...) into a transformers folder",
            "mmmerge.conversion:convert",
            (flag("path", type=Path), OUT, flag("--component", choices=["vision", "language"]), FORCE),
            _print_conversion, quiet=None),
    Command("merge", "merge models from a recipe (a mergekit config, or one section per component); under "
                     "torchrun each rank merges its share of the files, on its own GPU with --device cuda",
            "mmmerge.engine:merge",
            (flag("recipe", help="recipe YAML file"), OUT.but(help="output folder (a transformers model)"), DEVICE,
             flag("--threads", type=int, help="CPU threads for torch (torchrun starts each process with 1)"),
             SEED.but(help="seed for random methods (dare, della)"), OFFLINE, SHARD_SIZE,
             flag("--dry-run", action="store_true", help="validate and print the plan; write nothing"),
             FORCE, QUIET)),
    Command("moe", "a mixture-of-experts model from dense fine-tunes of one base (a mergekit-moe config as it "
                   "is): Mixtral, Qwen2-MoE, Qwen3-MoE or, from Qwen3-VL, Qwen3-VL-MoE; gates from prompts "
                   "(with images for a VLM)",
            "mmmerge.mixture:moe",
            (flag("config", help="mergekit-moe config YAML (base_model, experts, gate_mode, ...)"),
             OUT.but(help="output folder (a transformers model)"),
             flag("--random-seed", type=int, help="seed of random gates and expert noise (overrides the "
                                                  "config's random_seed)"),
             flag("--i-understand-this-is-not-useful-without-training", action="store_true",
                  help="allow experts that are all the same model (to train the result afterwards)"),
             DEVICE, OFFLINE, SHARD_SIZE, FORCE, QUIET)),
    Command("calibrate", "statistics of a model on calibration data for the regmean and fisher merges",
            "mmmerge.calibration:collect_statistics",
            (flag("model", type=Path, help="a transformers folder: a causal LM (text data) or an image-text-to-"
                                           "text model with its processor (image questions)"),
             flag("--data", dest="calibration", type=Path, required=True,
                  help="calibration JSONL: {\"image\", \"question\"} per line (as eval's jsonl task) or text "
                       "only ({\"question\"} or {\"text\"}); an answer is appended"),
             OUT.but(help="statistics file to write (safetensors), named by `statistics:` in a recipe"),
             flag("--kinds", help="gram (regmean), fisher (fisher) or both, comma-separated"),
             BATCH_SIZE.but(help="examples per forward pass of the gram pass"),
             LIMIT.but(dest="max_examples"),
             flag("--image-folder", type=Path, help="where the JSONL's images are (default: the JSONL's folder)"),
             DEVICE, FORCE.but(help="replace a statistics file mmmerge wrote (nothing else)"), QUIET,
             image_limit()),
            _print_statistics, quiet="progress"),
    Command("stitch", "vision encoder + projector + causal LLM -> one LLaVA checkpoint with its processor",
            "mmmerge.stitching:stitch", _stitch_flags(), _print_stitch, quiet=None, before=_stitch_options,
            defaults=_stitch_defaults(), one_of=("projector", "projector_type")),
    Command("extract-lora", "a peft LoRA for BASE whose update is the truncated SVD of MODEL - BASE",
            "mmmerge.lora.extract:extract_lora",
            (flag("--base", type=Path, required=True, help="the base model (the adapter is for it)"),
             flag("--model", type=Path, required=True, help="the fine-tuned or merged model"),
             flag("--rank", type=int, help="rank per module (with --energy: the largest rank)"),
             flag("--energy", type=float,
                  help="per module, the smallest rank keeping this fraction of squared singular values"),
             flag("--component", choices=["language", "vision"]), DEVICE, OUT, FORCE,
             QUIET.but(help="no per-module table")),
            _print_lora, quiet=None),
    Command("methods", "the merge methods, or one method's parameters (defaults, ranges) and paper",
            "mmmerge.methods._describe:describe_or_list",
            (flag("name", nargs="?", help="a method's name (default: list them all)"),), _print_text, quiet=None),
    Command("merge-loras", "one peft LoRA from several with the same base (peft's add_weighted_adapter)",
            "mmmerge.lora.combine:merge_loras",
            (flag("paths", metavar="adapters", type=Path, nargs="+", help="peft LoRA folders"),
             flag("--method", choices=ALL_METHODS),
             flag("--weights", type=float, nargs="+", help="one per adapter (default: all 1)"),
             flag("--density", type=float, help="fraction kept by ties, dare and magnitude_prune"),
             flag("--rank", type=int, help="rank of svd methods (default: the largest input rank)"),
             flag("--majority-sign-method", dest="sign_method", choices=["total", "frequency"]),
             SEED.but(help="seed for the dare methods"), OUT, FORCE),
            _print_lora_merge, quiet=None),
    Command("eval", "answer a VQA set or an lmms-eval benchmark with an image-text-to-text model and score it "
                    "as the official script (or lmms-eval) does",
            "mmmerge.eval:evaluate",
            (flag("model", type=Path,
                  help="a transformers image-text-to-text checkpoint folder (any family) with its processor"),
             flag("--task", required=True, choices=list(dict.fromkeys([*TASKS, *LMMS_TASKS])),
                  help="mmmerge's VQA tasks read the official files; lmms-eval's tasks (mme, mmmu_val, ...; pope "
                       "and gqa with --data) read lmms-lab's parquet datasets"),
             flag("--questions", type=Path, help="the task's questions file (or JSONL / problems.json)"),
             flag("--data", help="an lmms-eval task's dataset: a folder as huggingface_hub downloads it (parquet "
                                 "shards), a dataset ID in the local Hugging Face cache (default: lmms-eval's), or "
                                 "a JSONL of its rows with `image` paths"),
             flag("--annotations", type=Path, help="VQAv2 annotations JSON (omit for test-dev: predictions only)"),
             flag("--images", type=Path, help="image folder (jsonl: default the JSONL's folder)"),
             OUT.but(help="folder for predictions.json, metrics.json, samples.jsonl"), BATCH_SIZE,
             LIMIT.but(help="only the first N questions"), DEVICE,
             flag("--max-new-tokens", type=int, help="default: the task's (16; lmms-eval's for its tasks)"),
             flag("--prompt", help="prompt template with {question} (default: the task's LLaVA-1.5 one; an "
                                   "lmms-eval task's whole prompt is its {question})"),
             QUIET, FORCE, image_limit()),
            _print_metrics, quiet="progress", at_most_one=("questions", "data")),
    Command("eval-compare", "scores of several `mmmerge eval` outputs with bootstrap intervals, paired tests "
                            "against a baseline, and a bar chart",
            "mmmerge.eval.compare:compare",
            (flag("outs", type=Path, nargs="+", help="evaluation output folders, lmms-eval run folders or "
                                                     "<date>_samples_<task>.jsonl logs (paired by doc_id)"),
             flag("--baseline", help="the folder (or its name) every other run is tested against (default: the "
                                     "first)"),
             flag("--by", help="a samples.jsonl field to break scores down by: answer_type, question_type, "
                               "category ..."),
             flag("--level", type=float, help="confidence level of the intervals"),
             flag("--resamples", type=int, help="bootstrap resamples"),
             SEED.but(help="seed of the bootstrap"),
             OUT.but(dest="chart", required=False, help="bar chart PNG to write")),
            _print_comparison, quiet=None),
    Command("score", "rescore an lmms-eval sample log (--log_samples, lmms-eval 0.3) without a model, as "
                     "lmms-eval's task code scores it",
            "mmmerge.eval.lmms:score",
            (flag("samples", type=Path,
                  help="the task's *_samples_*.jsonl: doc_id, doc, target, resps, filtered_resps"),
             flag("--task", required=True, choices=list(LMMS_TASKS), help="the lmms-eval task name"),
             JSON.but(help='one object: {"task", "headline", "metrics"}')),
            _print_scores, quiet=None),
    Command("generate", "ask a model one question about one image (its own processor and chat template)",
            "mmmerge.eval.ask:generate",
            (flag("model", type=Path, help="an image-text-to-text checkpoint folder (any family `eval` runs)"),
             flag("--image", type=Path, required=True, help="the image file"),
             flag("--prompt", required=True, help="the question or instruction"),
             flag("--task", choices=list(TASKS), default=None,
                  help="ask as `eval --task` does: its instruction after the prompt, its answer end"),
             flag("--instruction", api=False, default=None,
                  help="text on the line after the prompt (default: the --task's own, else none; \"\" for none)"),
             flag("--max-new-tokens", type=int),
             flag("--one-line", action="store_true", api=False,
                  help="stop at the end of the first line, as `eval` does"),
             DEVICE, image_limit()),
            _print_answer, quiet=None, before=_ask_as_the_task_does),
    Command("search", "merge coefficients chosen by optuna, each candidate merged in memory and scored on a dev "
                      "split; run again to resume (under torchrun, or with --worker, processes share the study)",
            "mmmerge.searching:search",
            (flag("spec", help="a recipe whose searched values are {search: [LOW, HIGH]} or {choice: [...]}, "
                               "with a `search:` section (tasks, budget, objective)"),
             OUT.but(help="output folder: study.db, best_recipe.yml, trials.csv, history.png, importance.png, "
                          "result.json"),
             DEVICE,
             flag("--trials", type=int, help="finished trials in all (overrides the spec's)"),
             flag("--timeout", type=float, help="seconds this process takes trials for"),
             flag("--storage", help="an optuna storage URL other processes share (default: SQLite in --out)"),
             flag("--worker", action="store_true", help="only take trials of the study in --storage (or --out); "
                                                        "another process writes the outputs"),
             flag("--write-model", action="store_true", help="also write the best candidate to OUT/model"),
             OFFLINE, FORCE.but(help="start again in a previous mmmerge output (nothing else)"),
             QUIET.but(help="no line per trial")),
            call=_search_keeping_the_study),
    Command("demo", "the whole pipeline on a synthetic VQA world: base, specialists, merges, report",
            "mmmerge.demo:run_demo",
            (OUT.but(required=False), DEVICE.but(choices=["cpu", "cuda"]), SEED, FORCE,
             QUIET.but(help="no progress or table")),
            quiet="progress"),
]}
