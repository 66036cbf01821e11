"""Calibration statistics for the data-aware merge methods, collected once per model before merging.

    from mmmerge.calibration import collect_statistics
    collect_statistics("ft_model/", "calib.jsonl", "ft_model.stats.safetensors", device="cuda")

then, in a recipe: ``parameters: {statistics: ft_model.stats.safetensors}`` on that model, for ``regmean`` and
``fisher``. Collecting needs the model to run; merging then stays a pure function of each tensor.

The calibration JSONL holds one example per line: ``{"image": ..., "question": ...}`` as eval's ``jsonl`` task
reads it (the model is then loaded as an image-text-to-text model with its processor), or text only,
``{"question": ...}`` (a causal LM with its tokenizer); an ``answers``/``answer`` field, when present, is
appended to the text the Fisher's loss is computed on.

The file holds, for each weight name ``W`` of the transformers model:
- ``gram:W``: (1/N) XᵀX over the N (non-padding) input rows X [N, in] of every ``nn.Linear`` (RegMean's inner
  product matrix, averaged so files from calibration sets of different sizes weigh alike); collected with forward
  hooks, in batches, without gradients;
- ``fisher:W``: the diagonal empirical Fisher of every parameter, (1/n) Σₑ (∂ loss(e) / ∂W)² over the n examples
  e, loss the mean next-token cross-entropy of one example (gradients one example at a time, as the Fisher is a
  mean of per-example squared gradients, not the square of a batch's mean gradient).
Names are those a merge of the folder writes (what a merge method is told, MethodSpec.takes_name): the running
model's parameter names where the merge writes the same names (a causal LM), else the names of the tensors with
equal values in the engine's plan of a merge of the folder alone (a LLaVA whose checkpoint keeps an older layout).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UnreadableFileError
from .io import read_jsonl

KINDS = ("gram", "fisher")


def read_examples(path: Path) -> list[dict]:
    """Lines with ``question`` (text) and optionally ``image`` (resolved against the JSONL's folder)."""
    rows = []
    for line, row in read_jsonl(Path(path), UnreadableFileError):
        if not isinstance(row.get("question"), str):
            raise UnreadableFileError(f"{path}: line {line}: a calibration example needs a 'question' string")
        answers = row.get("answers", row.get("answer"))
        if isinstance(answers, list):
            answers = answers[0] if answers else ""
        answer = answers if isinstance(answers, str) else ""
        image = row.get("image")
        rows.append({"question": row["question"], "answer": answer,
                     "image": None if image is None else Path(path).parent / image})
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

            from .eval.generate import ModelLoadError
            from .io.reader import first_line

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
                self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
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
            batch = self.processor(images=[[open_image(e["image"])] for e in examples], text=prompts,
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


def _gram(m: _Model, examples: list[dict], batch_size: int) -> dict[str, torch.Tensor]:
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
    finally:
        for h in handles:
            h.remove()
    return {f"gram:{n}": (s / max(counts[n], 1)).float().cpu() for n, s in sums.items()}


def _fisher(m: _Model, examples: list[dict]) -> dict[str, torch.Tensor]:
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


def collect_statistics(model: str | Path, calibration: str | Path, out: str | Path, *, device: str = "cpu",
                       batch_size: int = 8, kinds: tuple[str, ...] = KINDS, max_examples: int | None = None) -> Path:
    """Run ``model`` (a transformers folder) on the calibration JSONL and write its statistics to ``out``
    (safetensors, keys ``gram:<weight name>`` and ``fisher:<parameter name>``). Returns ``out``."""
    from safetensors.torch import save_file

    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown statistics {unknown}; known: {', '.join(KINDS)}")
    examples = read_examples(Path(calibration))[:max_examples]
    m = _Model(Path(model), multimodal=examples[0]["image"] is not None, device=device)
    collected: dict[str, torch.Tensor] = {}
    if "gram" in kinds:
        collected.update(_gram(m, examples, batch_size))
    if "fisher" in kinds:
        collected.update(_fisher(m, examples))
    names = merge_names(Path(model), m.model)
    stats = {}
    for key, value in collected.items():
        kind, name = key.split(":", 1)
        for written in names.get(name, [name]):
            stats.setdefault(f"{kind}:{written}", value)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in stats.items()}, str(out),
              metadata={"model": str(model), "calibration": str(calibration), "examples": str(len(examples))})
    return out
