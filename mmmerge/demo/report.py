"""The demo's report: accuracies as fractions per model and question type, each merge against the base (with the
reason where it does not beat it), the recipes, seeds, question counts and versions; a table and a bar chart."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path



def accuracy_entry(metrics: dict, question_types) -> dict:
    """{"overall": fraction, TYPE: fraction, ...} from VQAv2 metrics in the official script's percent form."""
    per_type = metrics.get("perQuestionType", {})
    entry = {"overall": metrics["overall"] / 100.0}
    for t in question_types:
        entry[t] = per_type[t] / 100.0 if t in per_type else 0.0
    return entry


def mechanism(recipe: dict) -> str:
    """What a merge method does with the recipe's settings that can cost it against the base."""
    method = recipe["merge_method"]
    p = recipe.get("parameters", {})
    m = (recipe.get("models") or [{}])[0].get("parameters", {})
    n = len(recipe.get("models", []))
    if method == "task_arithmetic":
        return (f"task arithmetic adds lambda {p.get('lambda', 1.0):g} times the sum of the {n} specialists' task "
                "vectors to the base, so each specialist's forgetting of the other question types is added too, "
                "and where the specialists pull the same weights different ways they interfere")
    if method in ("ties", "dare_ties"):
        density = m.get("density", 1.0)
        how = "keeps a random" if method == "dare_ties" else "keeps only the largest"
        trim = (f"{how} {density:.0%} of each specialist's task-vector entries, " if density < 1 else
                "trims nothing at density 1, ")
        lost = "the dropped entries and the outvoted signs" if density < 1 else "the outvoted signs"
        return (f"{method} {trim}elects one sign per entry and averages the entries that agree (times lambda "
                f"{p.get('lambda', 1.0):g}): what {lost} carried is lost, while each specialist's forgetting of the "
                "other question types is kept")
    if method == "iso_c":
        return (f"iso_c gives every direction of the summed task vector the same weight (the mean singular value, "
                f"times alpha {p.get('alpha', 1.0):g}), so a direction only one specialist needs counts as much as a "
                "shared one")
    if method == "tsv_merge":
        return (f"tsv_merge keeps each specialist's top singular directions per matrix and makes them orthogonal "
                f"(times alpha {p.get('alpha', 1.0):g}); what a specialist forgot is in those directions too")
    if method == "linear":
        return f"linear averages the {n} models, so each specialist's part is diluted {n} times"
    return f"{method} combines {n} specialists that each forgot most of the other question types"


def validation_note(record: dict | None) -> str:
    """How a setting did on the validation world that chose it (benchmarks/demo_settings.py)."""
    if not record:
        return ""
    n = len(record["seeds"])
    return (f"on the validation world that chose its setting it beat the base on {record['beats_base']} of {n} "
            f"seeds ({', '.join(f'{100 * a:.1f} vs {100 * b:.1f}' for a, b in zip(record['accuracy'], record['base']))})")


def against_base(accuracy: dict, baseline: str, name: str, recipe: dict | None, validation: dict | None = None) -> dict:
    """Whether merge `name` beats the base overall; if not, why: where it falls short (measured), what the method
    does that can cost it (its mechanism with these settings) and how its setting did on validation."""
    row, base = accuracy[name], accuracy[baseline]
    diff = row["overall"] - base["overall"]
    out = {"beats_base": diff > 0, "difference": round(diff, 6), "reason": None, "validation": validation}
    if diff <= 0:
        short = sorted(((row[t] - base[t], t) for t in row if t != "overall" and row[t] < base[t]))
        where = ", ".join(f"{t} {100 * row[t]:.0f} vs {100 * base[t]:.0f}" for _, t in short[:3])
        note = validation_note(validation)
        out["reason"] = (f"{name} scores {100 * row['overall']:.1f} against the base's {100 * base['overall']:.1f}"
                         + (f"; it falls below the base on {where}" if where else "")
                         + (f": {mechanism(recipe)}" if recipe else "") + (f"; {note}" if note else ""))
    return out


def relative_recipe(recipe: dict, root: Path) -> dict:
    """The recipe with its model paths relative to `root` (the report's folder)."""
    def rel(path: str) -> str:
        p = Path(path)
        return p.relative_to(root).as_posix() if p.is_absolute() and p.is_relative_to(root) else path

    out = dict(recipe, base_model=rel(recipe["base_model"]))
    out["models"] = [dict(m, model=rel(m["model"])) for m in recipe["models"]]
    return out


def make_report(accuracy: dict, specialists: list[str], merged: list[str], root: Path, paths: dict, *,
                recipes: dict | None = None, baseline: str = "base", upper_bound: str | None = None,
                seeds: dict | None = None, questions: dict | None = None, versions: dict | None = None,
                training: dict | None = None, settings_chosen_by: str | None = None,
                validation: dict | None = None) -> dict:
    """The report; `checkpoint` is the best merged model's folder relative to `root`. Any number of merges:
    each gets its line in `against_base` (beats the base overall, or the reason it does not)."""
    root = Path(root)
    recipes, validation = recipes or {}, validation or {}
    best = max(merged, key=lambda n: (accuracy[n]["overall"], -merged.index(n)))
    return {
        "accuracy": accuracy, "baseline": baseline, "specialists": list(specialists), "merged": list(merged),
        "upper_bound": upper_bound, "best_merge": best,
        "checkpoint": Path(paths[best]).relative_to(root).as_posix(),
        "against_base": {n: against_base(accuracy, baseline, n, recipes.get(n), validation.get(n)) for n in merged},
        "recipes": {n: relative_recipe(r, root) for n, r in recipes.items()},
        "settings_chosen_by": settings_chosen_by,
        "seeds": seeds or {}, "questions": questions or {}, "training_steps": training or {},
        "versions": versions or {},
    }


def write_report(report: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def role(report: dict, name: str) -> str:
    if name == report.get("baseline"):
        return "baseline"
    if name == report.get("upper_bound"):
        return "upper bound"
    return "merge" if name in report["merged"] else "specialist" if name in report["specialists"] else ""


def format_table(report: dict) -> str:
    """Accuracy (%) per model and question type, one row per model with its role and its difference to the base
    overall; the best merge is starred; below, every merge that does not beat the base, with the reason."""
    acc = report["accuracy"]
    base = acc[report.get("baseline", "base")]["overall"]
    columns = ["overall"] + [k for k in next(iter(acc.values())) if k != "overall"]
    best = report.get("best_merge", Path(report["checkpoint"]).name)
    width = max(len(n) for n in acc) + 2
    lines = ["model".ljust(width) + "role".ljust(13) + "".join(c.rjust(9) for c in columns) + "  vs base"]
    for name, row in acc.items():
        star = "*" if name == best and name in report["merged"] else " "
        vs = "" if name == report.get("baseline") else f"{100 * (row['overall'] - base):+8.1f}"
        lines.append((name + star).ljust(width) + role(report, name).ljust(13)
                     + "".join(f"{100 * row[c]:9.1f}" for c in columns) + "  " + vs)
    total = report.get("questions", {}).get("total")
    if total:
        lines += textwrap.wrap(f"accuracy (%) on {total} held-out questions; * the best merge; upper bound: one model "
                               "fine-tuned on every question type together, with the specialists' steps combined", 110)
    losers = {n: v for n, v in report.get("against_base", {}).items() if not v["beats_base"]}
    if losers:
        lines.append("merges that do not beat the base:")
        for v in losers.values():
            lines += textwrap.wrap(v["reason"], 110, initial_indent="- ", subsequent_indent="  ")
    else:
        lines.append("every merge beats the base overall")
    shaky = {n: v for n, v in report.get("against_base", {}).items()
             if v["beats_base"] and v.get("validation") and v["validation"]["beats_base"] < len(v["validation"]["seeds"])}
    if shaky:
        lines.append("merges that beat the base here but not on every validation seed:")
    for n, v in shaky.items():
        lines += textwrap.wrap(f"{n} beats the base here, but {validation_note(v['validation'])}", 110,
                               initial_indent="- ", subsequent_indent="  ")
    return "\n".join(line for line in lines if line)


def plot(report: dict, path: Path) -> None:
    """Grouped bars, one group per question type (and overall), one bar per model but the base, which is a dashed
    baseline across each group; the upper bound is hatched, bars of zero height are labelled 0, the best merge
    starred; a caption says what every mark means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = report["accuracy"]
    baseline = report.get("baseline", "base")
    names = [n for n in acc if n != baseline]
    columns = ["overall"] + [k for k in acc[names[0]] if k != "overall"]
    merged, specialists, upper = report["merged"], report["specialists"], report.get("upper_bound")
    greys = plt.get_cmap("Greys")
    strong = plt.get_cmap("tab10")
    best = Path(report["checkpoint"]).name
    fig, ax = plt.subplots(figsize=(max(9.0, 1.9 * len(columns) + 2), 5.2))
    width = 0.84 / len(names)
    for i, name in enumerate(names):
        xs = [c + (i - (len(names) - 1) / 2) * width for c in range(len(columns))]
        ys = [100 * acc[name][c] for c in columns]
        if name in specialists:
            style = dict(color=greys(0.3 + 0.5 * specialists.index(name) / max(1, len(specialists) - 1)))
            label = f"{name} (specialist)"
        elif name == upper:
            style = dict(color="white", edgecolor="black", hatch="///")
            label = f"{name} (upper bound)"
        else:
            style = dict(color=strong(merged.index(name) % 10 if name in merged else 9))
            label = f"{name} (merge{', best' if name == best else ''})"
        ax.bar(xs, ys, width, label=label, **style)
        for x, y in zip(xs, ys):
            if y == 0:
                ax.text(x, 0.5, "0", ha="center", va="bottom", fontsize=6)
        if name == best:
            ax.text(xs[0], ys[0] + 1, "*", ha="center", va="bottom", fontsize=10)
    for c in range(len(columns)):
        y = 100 * acc[baseline][columns[c]]
        ax.hlines(y, c - 0.45, c + 0.45, colors="red", linestyles="--", linewidth=1.5,
                  label=f"{baseline} (baseline)" if c == 0 else None)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("mmmerge demo: specialists and their merges against the base")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    q = report.get("questions", {})
    per_type = ", ".join(f"{q[c]}" for c in columns[1:] if c in q)
    caption = (f"Bars: accuracy on the held-out questions ({q.get('total', '?')} in all; per type {per_type}). "
               f"Red dashed line: the {baseline} model, the baseline every merge should beat. Grey: specialists. "
               f"Coloured: merges of the specialists. Hatched: the multi-task model, the upper bound. '0': a bar of zero height. *: the best merge.")
    fig.text(0.01, 0.01, textwrap.fill(caption, 150), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
