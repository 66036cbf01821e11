"""What `mmmerge inspect` says about what mmmerge writes besides checkpoints: a peft LoRA folder, an eval or search
output, a statistics file (what it holds), and, in one line, a file inside one of them or a folder of such things.

Each reader looks at small files and headers only, and answers None when the path is not its kind.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .errors import MMMergeError, UnknownFormatError
from .io.guard import MARKER
from .io.reader import read_json


def lora_summary(path: Path) -> dict | None:
    from .lora.adapter import CONFIG, read_adapter

    if not (path.is_dir() and (path / CONFIG).is_file()):
        return None
    adapter = read_adapter(path)
    ranks = sorted({m.r for m in adapter.modules.values()})
    targets = adapter.config.get("target_modules")
    return {"path": str(path), "kind": "peft LoRA adapter", "base_model": adapter.config.get("base_model_name_or_path"),
            "rank": ranks[0] if len(ranks) == 1 else ranks, "lora_alpha": adapter.config.get("lora_alpha"),
            "modules": len(adapter.modules), "whole_tensors": sorted(adapter.whole),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets}


def eval_summary(path: Path) -> dict | None:
    if not (path.is_dir() and (path / "metrics.json").is_file() and (path / "run.json").is_file()):
        return None
    run, metrics = read_json(path / "run.json"), read_json(path / "metrics.json")
    if not isinstance(run, dict) or not isinstance(metrics, dict):
        raise MMMergeError(f"{path}: run.json and metrics.json must each hold a JSON object")
    headline = run.get("headline")
    return {"path": str(path), "kind": "mmmerge eval output", "model": run.get("model"), "task": run.get("task"),
            "questions": run.get("questions"), "headline": headline, "score": metrics.get(headline),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}


def _trial_count(path: Path) -> int | None:
    if not (path / "trials.csv").is_file():
        return None
    with open(path / "trials.csv", newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def search_summary(path: Path) -> dict | None:
    if not path.is_dir():
        return None
    result = path / "result.json"
    if result.is_file():
        r = read_json(result)
        if not (isinstance(r, dict) and "best_params" in r):
            return None
        return {"path": str(path), "kind": "mmmerge search output", "objective": r.get("objective"),
                "sampler": r.get("sampler"), "trials": r.get("trials"), "best_trial": r.get("best_trial"),
                "best_value": r.get("best_value"), "best_params": r.get("best_params"),
                "dev_scores": r.get("dev_scores"), "test_scores": r.get("test_scores")}
    if (path / "study.db").is_file() and (path / MARKER).is_file():
        return {"path": str(path), "kind": "mmmerge search output, unfinished (no result.json: run the search again "
                "to resume it)", "trials": _trial_count(path)}
    return None


def statistics_summary(path: Path) -> dict | None:
    from safetensors import safe_open

    from .calibration import KINDS, is_statistics_file

    if not (path.is_file() and path.suffix == ".safetensors" and is_statistics_file(path)):
        return None
    with safe_open(str(path), framework="pt") as f:
        meta, keys = f.metadata() or {}, list(f.keys())
    per_kind = {k: sum(1 for key in keys if key.startswith(f"{k}:")) for k in KINDS}
    return {"path": str(path), "kind": "mmmerge statistics (calibrate)", "model": meta.get("model"),
            "kinds": meta.get("kinds"), "tensors": len(keys), "tensors_per_kind": {k: n for k, n in per_kind.items() if n},
            "calibration": meta.get("calibration"), "examples": meta.get("examples")}


READERS = {"LoRA adapter": lora_summary, "eval output": eval_summary, "search output": search_summary,
           "statistics file": statistics_summary}  # the name of each kind in one-line answers: its reader


def output_summary(path: Path) -> dict | None:
    """The summary of an mmmerge output that is not a checkpoint, or None."""
    for read in READERS.values():
        found = read(Path(path))
        if found is not None:
            return found
    return None


def _what(path: Path) -> str | None:
    """The kind of a model folder or an output, for the one-line answers; None for anything else (or unreadable)."""
    from .adapters import detect_adapter

    try:
        noun = next((noun for noun, read in READERS.items() if read(path) is not None), None)
        if noun is None:
            detect_adapter(path)
    except MMMergeError:
        return None
    return noun or "model folder"


def one_line(path: Path) -> dict:
    """A file inside a model folder or an output (what it belongs to), or a folder that holds models or outputs
    (which): named in one line. Anything else is an UnknownFormatError."""
    path = Path(path)
    if path.is_file():
        owner = _what(path.parent)
        if owner is not None:
            return {"path": str(path), "kind": "file", "line": f"{path}: a file of the {owner} {path.parent}; "
                    f"`mmmerge inspect {path.parent}` summarises it"}
    elif path.is_dir():
        held: dict[str, list[str]] = {}
        for child in sorted(path.iterdir()):
            kind = _what(child) if not child.name.startswith(".") else None
            if kind is not None:
                held.setdefault(kind, []).append(child.name)
        if held:
            parts = [f"{len(names)} {kind}{'s' if len(names) > 1 else ''} ({', '.join(names[:6])}"
                     f"{', ...' if len(names) > 6 else ''})" for kind, names in held.items()]
            return {"path": str(path), "kind": "folder", "holds": held,
                    "line": f"{path}: a folder of {'; '.join(parts)}; inspect each"}
    from .adapters import describe_found

    raise UnknownFormatError(f"{path}: {describe_found(path)}; not a checkpoint (transformers, open_clip, timm) nor "
                             f"what mmmerge writes (LoRA folder, eval or search output, statistics file)")


def format_output(s: dict) -> str:
    if "line" in s:
        return s["line"]
    lines = [s["path"], f"  kind: {s['kind']}"]
    lines += [f"  {key}: {_text(value)}" for key, value in s.items() if key not in ("path", "kind") and value not in
              (None, [], {})]
    return "\n".join(lines)


def _text(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
