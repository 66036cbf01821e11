"""The streaming executor: for each output tensor, read its inputs, merge in float32 on the chosen device,
check it is finite, cast, write, free. Peak memory is the inputs of one tensor plus its result.

The output is a transformers folder: config.json, sharded safetensors, the side files (tokenizer,
processor, generation config) of the checkpoint the config comes from, and `mmmerge_recipe.yml`
recording the recipe and the mmmerge version. It is written into a temporary folder that replaces
`out` only when everything succeeded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .. import __version__
from ..checkpoint import LazyTensor
from ..device import resolve_device  # re-exported: callers import it from here
from ..errors import MMMergeError, NonFiniteError
from ..io import atomic_output_dir, check_output_dir, pages, write_safetensors
from ..io.folder import copy_side_files
from ..io.writer import DEFAULT_SHARD_BYTES
from ..methods import merge_tensor
from ..methods._common import release_scratch
from ..model_card import model_card
from .finite import AgreedInf, agreed_inf, input_sources, non_finite_input
from .plan import Plan, TensorTask

SIDE_FILES_SKIPPED = ("config.json", "README.md", "mergekit_config.yml", "mergekit_moe_config.yml", "mmmerge_recipe.yml")


def _exact_in(dtype: torch.dtype, compute: torch.dtype) -> bool:
    """Rounding `dtype` values to float32 changes nothing (half precision -> float32): leave them narrow and let
    the method widen them one at a time, which keeps half the bytes in memory."""
    return compute == torch.float32 and dtype in (torch.float16, torch.bfloat16)


def _all_finite(t: torch.Tensor) -> bool:
    """True when no entry is inf/NaN. A sum propagates them and, unlike an elementwise test, allocates nothing
    (15-50x faster); only a sum that overflows on its own (huge entries) falls back to the elementwise test. A slice
    at a time, each let go once read: an output computed in the file's pages is not mapped back whole."""
    flat = t.reshape(-1)
    step = max(1, pages.SLICE // max(1, t.element_size()))
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step]
        finite = bool(torch.isfinite(torch.sum(part))) or bool(torch.isfinite(part).all())
        pages.release(part)
        if not finite:
            return False
    return True


def run_task(task: TensorTask, device: torch.device, rounded: bool = True, *,
             sources: dict[int, str] | None = None, out: torch.Tensor | None = None,
             agreed: AgreedInf | None = None) -> torch.Tensor:
    """The output tensor of one task, on the CPU in the task's dtype (`rounded=False`: in the compute dtype,
    to tell apart the two causes of a non-finite output). `sources` names the inputs in errors
    (finite.input_sources). `out`: where to write it (the output file's pages); a method that can computes
    into it on the CPU, so no whole-tensor result is held. `agreed`: infs every input holds at the same places,
    merged as zeros and put back in the output (finite.py); looked for only once an output is not finite."""
    def fetch(t: LazyTensor) -> torch.Tensor:
        x = t.load().to(device)
        if agreed is not None and t is not task.extra_rows:
            x = agreed.take_out(x)
        if task.input_dtype is not None and x.is_floating_point() and not _exact_in(x.dtype, task.input_dtype):
            x = x.to(task.input_dtype)  # the recipe's `dtype`: inputs are rounded to it, the math is float32
        return x

    drawn_from = None  # the shared stream's state before this task drew: a merge again draws the same values

    def again_or_error() -> torch.Tensor:
        """The output merged again without the infs every input agrees on, when there are such; else the error."""
        found = agreed_inf(task) if agreed is None and rounded else None
        if found is None:
            raise _non_finite(task, device, sources, agreed) from None
        if drawn_from is not None:  # the stream goes on as after one merge of the tensor, as mergekit's does
            task.stream.generator(device).set_state(drawn_from)
        return run_task(task, device, sources=sources, out=out, agreed=found)

    with torch.no_grad():
        if task.method is None:
            result = fetch(task.tensors[0])
        else:
            tensors = [fetch(t) for t in task.tensors]
            base = fetch(task.base) if task.base is not None else None
            generator = None
            if task.stream is not None:
                generator = task.stream.generator(device)
                drawn_from = generator.get_state() if rounded and agreed is None else None
            elif task.seed is not None:
                generator = torch.Generator(device=device).manual_seed(task.seed)
            in_place = out is not None and rounded and device.type == "cpu" and task.extra_rows is None
            try:
                result = merge_tensor(task.method, tensors, base, task.params, task.global_params, generator,
                                      out_dtype=task.dtype if rounded and task.dtype.is_floating_point else None,
                                      native_dtype=task.native_dtype, name=task.name, input_names=task.input_names,
                                      out=out if in_place else None)
            except NonFiniteError:  # a method that cannot work on NaN/inf inputs (TIES' top-k): look at the inputs
                del tensors, base
                return again_or_error()
            del tensors, base
            if task.extra_rows is not None:
                result = torch.cat([result, fetch(task.extra_rows).to(result.dtype)])
        if rounded and result.is_floating_point():
            result = result.to(task.dtype)
            if not _all_finite(result):
                return again_or_error()
            if agreed is not None:
                agreed.put_back(result)
        if out is None:
            return result.to("cpu")
        return result if result is out else pages.copy(out, result)


def _non_finite(task: TensorTask, device: torch.device, sources: dict[int, str] | None = None,
                agreed: AgreedInf | None = None) -> MMMergeError:
    """The error for a task whose output holds inf/NaN (but for the `agreed` infs): an input that holds them, a
    merge that produced them, or values beyond the range of the output dtype (told apart by merging again without
    rounding to it)."""
    bad_input = non_finite_input(task, sources or {}, agreed)
    if bad_input is not None:
        return bad_input
    wide = run_task(task, device, rounded=False, agreed=agreed)
    bad = int((~torch.isfinite(wide)).sum())
    if bad:
        return NonFiniteError(f"tensor {task.name}: the merge produced {bad} non-finite value(s) (inf/NaN); "
                            f"check the weights and parameters for this tensor")
    return NonFiniteError(f"tensor {task.name}: values overflow {str(task.dtype).removeprefix('torch.')}; "
                        f"use a wider out_dtype")


def recipe_text(plan: Plan) -> str:
    text = plan.recipe.text if plan.recipe.text else ""
    return f"# written by mmmerge {__version__}\n" + text + ("" if text.endswith("\n") else "\n")


def check_output(plan: Plan, out: Path, force: bool, *, data=()) -> None:
    """Refuse an `out` this plan must not write: not empty (unless force), the same as, holding or inside an
    input model, or the same as or holding a file it reads (statistics; `data`: the recipe file) (io/guard.py)."""
    check_output_dir(out, force, inputs=plan.inputs, data=[*plan.data, *data])


def output_tensors(plan: Plan, dev: torch.device) -> dict[str, LazyTensor]:
    """The output's tensors, each merged when it is loaded (shapes and dtypes known up front)."""
    sources = input_sources(plan)
    return {t.name: LazyTensor(t.shape, t.dtype, lambda t=t: run_task(t, dev, sources=sources),
                               fill=lambda out, t=t: run_task(t, dev, sources=sources, out=out)) for t in plan.tasks}


def write_other_files(plan: Plan, tmp: Path, out: Path) -> None:
    """Everything in the output folder but the weights: side files, tokenizer, config, recipe, model card."""
    if plan.side_files_from is not None:
        copy_side_files(plan.side_files_from, tmp, skip=SIDE_FILES_SKIPPED)
    if plan.tokenizer is not None:  # the recipe's tokenizer and chat template replace the copied ones
        plan.tokenizer.write(tmp)
    (tmp / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n")
    if plan.preprocessor:
        (tmp / "preprocessor_config.json").write_text(json.dumps(plan.preprocessor, indent=2) + "\n")
    (tmp / "mmmerge_recipe.yml").write_text(recipe_text(plan))
    (tmp / "README.md").write_text(model_card(plan, out))


def progress_bar(nbytes: int, count: int, quiet: bool) -> tuple[tqdm, Callable[[str, int], None]]:
    """A bar of `nbytes`, and the `on_tensor` callback that moves it and counts the tensors out of `count`."""
    bar = tqdm(total=nbytes, unit="B", unit_scale=True, unit_divisor=1024, desc="merging", disable=quiet,
               dynamic_ncols=True, leave=False)
    done = [0]

    def on_tensor(name: str, nbytes: int) -> None:
        done[0] += 1
        bar.update(nbytes)
        bar.set_postfix_str(f"{done[0]}/{count} tensors", refresh=False)

    return bar, on_tensor


def metadata() -> dict:
    return {"mmmerge_version": __version__}


def execute(plan: Plan, out: Path, *, device: str = "cpu", force: bool = False, quiet: bool = False,
            max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write the planned output folder; returns its path."""
    dev = resolve_device(device)
    out = Path(out)
    check_output(plan, out, force)
    tensors = output_tensors(plan, dev)
    bar, on_tensor = progress_bar(plan.nbytes, len(tensors), quiet)
    start = time.perf_counter()
    try:
        with atomic_output_dir(out, force) as tmp:
            write_safetensors(tmp, tensors, max_shard_bytes=max_shard_bytes, metadata=metadata(),
                              on_tensor=on_tensor)
            write_other_files(plan, tmp, out)
    finally:
        bar.close()
        release_scratch()  # the next merge of this process may be of other shapes, or never come
    if not quiet:
        secs = time.perf_counter() - start
        print(f"wrote {len(tensors)} tensors ({plan.nbytes / 2**20:,.1f} MiB) to {out} in {secs:.1f} s")
    return out
