"""Compare evaluation folders: a Markdown table of their scores and a bar chart."""

from __future__ import annotations

from pathlib import Path

from ..errors import MMMergeError
from ..io import read_json

# Columns shown per run: every top-level number of metrics.json and the per-answer-type scores (the
# per-question-type ones, 65 for VQAv2, stay in metrics.json). Counts are not scores.
_SKIP = {"tp", "fp", "tn", "fn", "questions"}


def load_run(out) -> dict:
    out = Path(out)
    path = out / "metrics.json"
    if not path.is_file():
        raise MMMergeError(f"{path}: not found; is {out} an `mmmerge eval` output folder?")
    metrics = read_json(path)
    run = read_json(out / "run.json") if (out / "run.json").is_file() else {}
    scores = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in _SKIP}
    scores.update(metrics.get("perAnswerType", {}))
    headline = run.get("headline") or next((k for k in ("overall", "accuracy", "f1") if k in metrics), None)
    if headline not in scores:
        raise MMMergeError(f"{path}: no score to compare")
    return {"name": out.name, "task": run.get("task", "?"), "model": run.get("model", "?"), "headline": headline,
            "scores": scores}


def markdown_table(runs: list[dict]) -> str:
    cols = list(dict.fromkeys(c for r in runs for c in [r["headline"], *r["scores"]]))
    lines = ["| run | task | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for r in runs:
        cells = [f"{r['scores'][c]:.2f}" if c in r["scores"] else "–" for c in cols]
        lines.append(f"| {r['name']} | {r['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(runs: list[dict], path) -> Path:
    """Grouped bars: one group per score all runs have (the headline first), one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shared = [c for c in [runs[0]["headline"], *runs[0]["scores"]] if all(c in r["scores"] for r in runs)]
    shared = list(dict.fromkeys(shared))[:8] or [runs[0]["headline"]]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(shared) * max(1, len(runs) / 2)), 3.5))
    for i, r in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(shared))]
        ax.bar(xs, [r["scores"].get(c, 0.0) for c in shared], width, label=r["name"])
    ax.set_xticks(range(len(shared)), shared, rotation=20, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare(outs, chart=None) -> str:
    """The Markdown table for the evaluation folders `outs`; also writes the chart PNG when `chart` is given."""
    runs = [load_run(o) for o in outs]
    if not runs:
        raise MMMergeError("give at least one evaluation folder")
    if chart is not None:
        bar_chart(runs, chart)
    return markdown_table(runs)
