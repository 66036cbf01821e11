"""Calibration statistics for the data-aware merge methods, collected once per model before merging.

    from mmmerge.calibration import collect_statistics
    collect_statistics("ft_model/", "calib.jsonl", "ft_model.stats.safetensors", device="cuda")

then, in a recipe: ``parameters: {statistics: ft_model.stats.safetensors}`` on that model, for ``regmean`` and
``fisher``. Collecting needs the model to run; merging then stays a pure function of each tensor.

The calibration JSONL holds one example per line: ``{"image": ..., "question": ...}`` as eval's ``jsonl`` task
reads it (the model is then loaded as an image-text-to-text model with its processor), or text only,
``{"question": ...}`` or ``{"text": ...}`` (a causal LM with its tokenizer); an ``answers``/``answer`` field, when
present, is appended to the text the Fisher's loss is computed on.

The file holds, for each weight name ``W`` of the transformers model:
- ``gram:W``: (1/N) XᵀX over the N (non-padding) input rows X [N, in] of every ``nn.Linear`` (RegMean's inner
  product matrix, averaged so files from calibration sets of different sizes weigh alike); collected with forward
  hooks, in batches, without gradients;
- ``fisher:W``: the diagonal empirical Fisher of every parameter, (1/n) Σₑ (∂ loss(e) / ∂W)² over the n examples
  e, loss the mean next-token cross-entropy of one example (gradients one example at a time, as the Fisher is a
  mean of per-example squared gradients, not the square of a batch's mean gradient).
Names are those a merge of the folder writes (what a merge method is told, MethodSpec.calling "named"): the running
model's parameter names where the merge writes the same names (a causal LM), else the names of the tensors with
equal values in the engine's plan of a merge of the folder alone (a LLaVA whose checkpoint keeps an older layout).

The command line: ``mmmerge calibrate MODEL --data CALIB.jsonl --out MODEL.stats.safetensors``. The file appears
whole or not at all: it is written beside ``out`` under a temporary name and renamed into place, with a lock on
``out`` for the whole run; an existing file is replaced only with ``force`` and only when mmmerge wrote it.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import torch

from .errors import NonFiniteError, OutputExistsError, RecipeError, UnreadableFileError, UnsafeOutputError
from .images import DEFAULT_MAX_PIXELS, image_size
from .io import read_jsonl

KINDS = ("gram", "fisher")
WRITTEN_BY = "written_by"  # metadata key of a statistics file mmmerge wrote (what `force` may replace)


def read_examples(path: Path, image_folder: Path | None = None) -> list[dict]:
    """Lines with ``question`` (text) and optionally ``image`` (resolved against ``image_folder``, by default the
    JSONL's folder)."""
    if not Path(path).is_file():
        raise UnreadableFileError(f"{path}: no such calibration file" if not Path(path).is_dir() else
                                  f"{path}: is a folder; the calibration data is a JSONL file")
    folder = Path(path).parent if image_folder is None else Path(image_folder)
    rows = []
    for line, row in read_jsonl(Path(path), UnreadableFileError):
        question = row.get("question", row.get("text"))
        if not isinstance(question, str) or not question.strip():
            raise UnreadableFileError(f"{path}: line {line}: a calibration example needs a 'question' (or 'text') "
                                      "string")
        if row.get("image") is not None and not (isinstance(row["image"], str) and row["image"]):
            raise UnreadableFileError(f"{path}: line {line}: 'image' must be an image file's path")
        answers = row.get("answers", row.get("answer"))
        if isinstance(answers, list):
            answers = answers[0] if answers else ""
        answer = answers if isinstance(answers, str) else ""
        image = row.get("image")
        rows.append({"question": question, "answer": answer,
                     "image": None if image is None else folder / image, "line": line})
    if not rows:
        raise UnreadableFileError(f"{path}: no calibration examples")
    if len({r["image"] is None for r in rows}) > 1:
        raise UnreadableFileError(f"{path}: either every calibration example has an 'image' or none has")
    return rows


class _Model:
    """A loaded model and how to encode a batch of examples for it (with `labels` for the LM loss)."""

    def __init__(self, folder: Path, *, multimodal: bool, device: str):
        self.multimodal = multimodal
        if multimodal:
            from .eval.generate import load_model

            self.model, self.processor = load_model(folder, device, progress=False)
            self.tokenizer = self.processor.tokenizer
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from .adapters.hf_common import transformers_bars
            from .eval.generate import ModelLoadError
            from .io.reader import first_line

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
                with transformers_bars(False):  # calibrate's own bar counts the examples
                    self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                                      dtype=torch.float32)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelLoadError(f"{folder}: cannot load a causal LM with its tokenizer ({first_line(e)})") from e
            self.model.to(device).eval()
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = device

    def encode(self, examples: list[dict]) -> dict:
        texts = [(e["question"] + " " + e["answer"]).strip() for e in examples]
        if self.multimodal:
            from .eval.ask import open_image
            from .eval.generate import build_prompt

            prompts = [build_prompt(self.processor, e["question"]) + (" " + e["answer"] if e["answer"] else "")
                       for e in examples]
            # each image's size passed the limit before the model loaded
            batch = self.processor(images=[[open_image(e["image"], max_pixels=None)] for e in examples], text=prompts,
                                   return_tensors="pt", padding=True)
        else:
            batch = self.tokenizer(texts, return_tensors="pt", padding=True)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        image_token = getattr(self.model.config, "image_token_id", getattr(self.model.config, "image_token_index", None))
        if image_token is not None:
            labels[labels == image_token] = -100
        batch["labels"] = labels
        return batch


def _non_finite(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def check_finite_weights(model: torch.nn.Module, folder) -> None:
    """A NaN or inf weight makes every statistic that flows through it non-finite: named before any example runs."""
    for name, p in model.named_parameters():
        n = _non_finite(p.detach())
        if n:
            raise NonFiniteError(f"{folder}: weight {name} holds {n} non-finite value(s) (NaN/inf), so its statistics "
                                 "would too; repair the checkpoint. Nothing was written")


def check_finite_statistics(stats: dict[str, torch.Tensor], folder) -> None:
    """Statistics with NaN or inf (an overflow on the calibration data) would poison every merge that reads them."""
    for key, value in stats.items():
        n = _non_finite(value)
        if n:
            raise NonFiniteError(f"statistic {key} of {folder}: {n} non-finite value(s) (NaN/inf) on the calibration "
                                 "data; nothing was written")


def _gram(m: _Model, examples: list[dict], batch_size: int, bar=None) -> dict[str, torch.Tensor]:
    """(1/N) XᵀX of each nn.Linear's input rows, padding rows left out where the rows are the text's tokens."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask: list[torch.Tensor | None] = [None]

    def hook(name):
        def record(module, args, output):
            x = args[0].detach()
            if mask[0] is not None and tuple(x.shape[:-1]) == tuple(mask[0].shape):
                x = x[mask[0].bool()]
            x = x.reshape(-1, x.shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    handles = [mod.register_forward_hook(hook(f"{n}.weight")) for n, mod in m.model.named_modules()
               if isinstance(mod, torch.nn.Linear)]
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = m.encode(examples[start:start + batch_size])
                mask[0] = batch["attention_mask"]
                batch.pop("labels")
                m.model(**batch)
                if bar is not None:
                    bar.update(len(examples[start:start + batch_size]))
    finally:
        for h in handles:
            h.remove()
    return {f"gram:{n}": (s / max(counts[n], 1)).float().cpu() for n, s in sums.items()}


def _fisher(m: _Model, examples: list[dict], bar=None) -> dict[str, torch.Tensor]:
    """Mean over examples of each parameter's squared gradient of that example's LM loss."""
    params = {n: p for n, p in m.model.named_parameters() if p.is_floating_point()}
    for p in params.values():
        p.requires_grad_(True)
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    with torch.enable_grad():
        for e in examples:
            m.model.zero_grad(set_to_none=True)
            m.model(**m.encode([e])).loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    sums[n] += p.grad.float().square()
            if bar is not None:
                bar.update(1)
    m.model.zero_grad(set_to_none=True)
    return {f"fisher:{n}": (s / len(examples)).cpu() for n, s in sums.items()}


def _fingerprint(x: torch.Tensor) -> tuple:
    flat = x.detach().reshape(-1).float().cpu()
    return tuple(x.shape), tuple(flat[:32].tolist()), float(flat.double().sum())


def merge_names(folder: Path, model: torch.nn.Module) -> dict[str, list[str]]:
    """Each parameter name of the running model -> the names a merge of ``folder`` writes for it."""
    from .engine import plan_merge

    plan = plan_merge({"merge_method": "linear", "models": [{"model": str(folder), "parameters": {"weight": 1.0}}]})
    written = {t.name: t for t in plan.tasks}
    params = dict(model.named_parameters(remove_duplicate=False))
    names = {n: [n] for n in params if n in written}
    unmatched = {n: p for n, p in params.items() if n not in names}
    if unmatched:
        by_value: dict[tuple, list[str]] = {}
        for t in written.values():
            if len(t.tensors) == 1 and t.extra_rows is None and t.tensors[0].dtype.is_floating_point:
                by_value.setdefault(_fingerprint(t.tensors[0].load()), []).append(t.name)
        for n, p in unmatched.items():
            names[n] = _closest(n, by_value.get(_fingerprint(p), [n]))
    return names


def _closest(name: str, candidates: list[str]) -> list[str]:
    """The candidates sharing the longest dotted suffix with ``name``: equal values alone cannot tell apart tensors
    that are equal (untouched norms are all ones), the layer number in the suffix can."""
    def shared(c: str) -> int:
        a, b = name.split(".")[::-1], c.split(".")[::-1]
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    best = max(shared(c) for c in candidates)
    return [c for c in candidates if shared(c) == best]


def parse_kinds(kinds) -> tuple[str, ...]:
    """``"gram,fisher"`` or a sequence of kinds -> the kinds in KINDS order; RecipeError for an unknown or empty one."""
    given = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else map(str, kinds)) if k.strip()]
    unknown = [k for k in given if k not in KINDS]
    if unknown or not given:
        what = f"{unknown[0]!r} is not a kind of statistics" if unknown else "no kind of statistics given"
        raise RecipeError(f"kinds: {what}; use {' or '.join(KINDS)}, or both: {','.join(KINDS)}")
    return tuple(k for k in KINDS if k in given)


def is_statistics_file(path: Path) -> bool:
    """True when ``path`` is a safetensors file of statistics that mmmerge wrote (its metadata says so)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError, ValueError):
        return False
    return meta.get(WRITTEN_BY, "").startswith("mmmerge") or {"model", "calibration", "examples"} <= set(meta)


def check_statistics_output(out: Path, *, force: bool = False, inputs=(), data=()) -> Path:
    """Refuse an output file this run must not write, before any work; returns its absolute path. Not empty
    text, not a folder, not inside an input model's folder, not a file the run reads; an existing file only
    with ``force`` and only a statistics file mmmerge wrote."""
    if not isinstance(out, (str, os.PathLike)) or str(out) in ("", "."):
        raise UnsafeOutputError(f"the statistics output must be a file path (e.g. model.stats.safetensors), "
                                f"got {out!r}")
    target = Path(out).resolve()
    if target.is_dir():
        raise OutputExistsError(f"{out}: is a folder; the statistics output is a file (e.g. model.stats.safetensors)")
    for src in inputs:
        real = Path(src).resolve()
        if target == real or real in target.parents:
            raise UnsafeOutputError(f"{out}: the statistics file would be written into the input model {src}; "
                                    "write it outside the model's folder")
    for src in data:
        if src is not None and target == Path(src).resolve():
            raise UnsafeOutputError(f"{out}: the statistics file would replace {src}, which this run reads; choose "
                                    "another output file")
    if target.exists() or target.is_symlink():
        if not force:
            raise OutputExistsError(f"{out}: exists; pass --force (force=True) to replace it")
        if target.is_symlink() or not is_statistics_file(target):
            raise UnsafeOutputError(f"{out}: --force replaces only a statistics file written by mmmerge, and this "
                                    "file is not one; move it away or choose another output file")
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_name(target: Path) -> Path:
    """``.<name>.tmp-XXXXXXXX`` beside ``target``: the form io/stale.py knows as a dead run's leftover."""
    from .io.atomic import NAME_CHARS

    return target.parent / f".{target.name}.tmp-{''.join(secrets.choice(NAME_CHARS) for _ in range(8))}"


def _clear_stale_temps(target: Path) -> None:
    """Remove half-written statistics of dead runs on ``target`` (call with the output's lock held)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.tmp-[a-z0-9_]{{8}}")
    if target.parent.is_dir():
        for p in target.parent.iterdir():
            if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)


def write_statistics(stats: dict[str, torch.Tensor], target: Path, metadata: dict[str, str], *,
                     force: bool = False) -> Path:
    """Write ``stats`` to a temporary file beside ``target`` and rename it into place (never over a file that
    appeared meanwhile, unless ``force``); on any error, Ctrl-C or SIGTERM the temporary file is removed."""
    from safetensors.torch import save_file

    from .io.rename import rename_noreplace
    from .signals import deferred_signals

    tmp = None
    try:
        with deferred_signals():
            tmp = _temp_name(target)
        save_file({k: v.contiguous() for k, v in stats.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates its files 0600; an output gets the user's umask
        with deferred_signals():
            if force and target.exists():
                os.replace(tmp, target)
            else:
                try:
                    rename_noreplace(tmp, target)
                except FileExistsError:
                    raise OutputExistsError(f"{target}: a file was created there while this run was writing; it "
                                            "was left as it is and this run's output was removed") from None
            tmp = None
    finally:
        if tmp is not None:
            with deferred_signals():
                tmp.unlink(missing_ok=True)
    return target


def collect_statistics(model: str | Path, calibration: str | Path, out: str | Path, *, device: str | None = None,
                       batch_size: int = 8, kinds=KINDS, max_examples: int | None = None,
                       image_folder: str | Path | None = None, force: bool = False, progress: bool = False,
                       max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> Path:
    """Run ``model`` (a transformers folder) on the calibration JSONL and write its statistics to the file ``out``
    (safetensors, keys ``gram:<weight name>`` and ``fisher:<parameter name>``). Returns ``out``.

    ``kinds``: "gram" (RegMean), "fisher" (Fisher merging) or both (a sequence, or text such as "gram,fisher");
    ``max_examples``: only the first N examples; ``image_folder``: where the images are (default: the JSONL's
    folder); ``device``: cpu or cuda (None: cuda when available); ``force``: replace a statistics file mmmerge
    wrote before; ``max_image_pixels``: larger images are refused before they are decoded (None: no limit).
    Everything is checked before the model loads; the file appears whole or not at all, and only with finite
    statistics."""
    from tqdm.auto import tqdm

    from .device import resolve_device
    from .io.lock import output_lock

    kinds = parse_kinds(kinds)
    for name, value in (("batch size (batch_size)", batch_size), ("example limit (max_examples)", max_examples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RecipeError(f"the {name} must be a positive integer, got {value!r}")
    target = check_statistics_output(Path(out), force=force, inputs=[model], data=[calibration])
    dev = str(resolve_device(device))
    examples = read_examples(Path(calibration), None if image_folder is None else Path(image_folder))[:max_examples]
    for e in examples:  # every image readable before the model loads
        if e["image"] is not None:
            if not e["image"].is_file():
                raise UnreadableFileError(f"{calibration}: line {e['line']}: no such image file {e['image']}")
            try:
                image_size(e["image"], max_pixels=max_image_pixels)
            except UnreadableFileError as err:
                raise UnreadableFileError(f"{calibration}: line {e['line']}: {err}") from None
    created = [p for p in target.parents if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with output_lock(target):
            _clear_stale_temps(target)
            check_statistics_output(Path(out), force=force, inputs=[model], data=[calibration])
            m = _Model(Path(model), multimodal=examples[0]["image"] is not None, device=dev)
            check_finite_weights(m.model, model)
            collected: dict[str, torch.Tensor] = {}
            total = len(examples) * len(kinds)
            with tqdm(total=total, desc="calibrate", unit="example", disable=not progress) as bar:
                if "gram" in kinds:
                    collected.update(_gram(m, examples, batch_size, bar))
                if "fisher" in kinds:
                    collected.update(_fisher(m, examples, bar))
            names = merge_names(Path(model), m.model)
            stats = {}
            for key, value in collected.items():
                kind, name = key.split(":", 1)
                for written in names.get(name, [name]):
                    stats.setdefault(f"{kind}:{written}", value)
            check_finite_statistics(stats, model)
            from . import __version__

            metadata = {WRITTEN_BY: f"mmmerge {__version__}", "model": str(model), "calibration": str(calibration),
                        "examples": str(len(examples)), "kinds": ",".join(kinds)}
            write_statistics(stats, target, metadata, force=force)
    except BaseException:
        for folder in created:  # innermost first; only empty ones go
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    return Path(out)
