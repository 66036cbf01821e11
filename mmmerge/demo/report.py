"""The demo's report: accuracies as fractions per model and question type, a table, and a bar chart."""

from __future__ import annotations

import json
from pathlib import Path


def accuracy_entry(metrics: dict, question_types) -> dict:
    """{"overall": fraction, TYPE: fraction, ...} from VQAv2 metrics in the official script's percent form."""
    per_type = metrics.get("perQuestionType", {})
    entry = {"overall": metrics["overall"] / 100.0}
    for t in question_types:
        entry[t] = per_type[t] / 100.0 if t in per_type else 0.0
    return entry


def make_report(accuracy: dict, specialists: list[str], merged: list[str], root: Path, paths: dict) -> dict:
    """The report of the issue's schema; `checkpoint` is the best merged model's folder relative to `root`."""
    best = max(merged, key=lambda n: (accuracy[n]["overall"], -merged.index(n)))
    return {"accuracy": accuracy, "specialists": list(specialists), "merged": list(merged),
            "checkpoint": Path(paths[best]).relative_to(root).as_posix()}


def write_report(report: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def format_table(report: dict) -> str:
    """Accuracy (%) per model and question type, one row per model; the best merged model is starred."""
    acc = report["accuracy"]
    columns = ["overall"] + [k for k in next(iter(acc.values())) if k != "overall"]
    best = Path(report["checkpoint"]).name
    width = max(len(n) for n in acc) + 2
    lines = ["model".ljust(width) + "".join(c.rjust(10) for c in columns)]
    for name, row in acc.items():
        role = " (merged)" if name in report["merged"] else " (specialist)" if name in report["specialists"] else ""
        star = "*" if name == best and name in report["merged"] else " "
        lines.append((name + star).ljust(width) + "".join(f"{100 * row[c]:10.1f}" for c in columns) + role)
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Grouped bars: one group per question type (and overall), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = report["accuracy"]
    names = list(acc)
    columns = ["overall"] + [k for k in acc[names[0]] if k != "overall"]
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 2, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [c + (i - (len(names) - 1) / 2) * width for c in range(len(columns))]
        ax.bar(xs, [100 * acc[name][c] for c in columns], width, label=name)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("mmmerge demo: base, specialists and merged models")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
