"""Compare evaluation folders: their metrics, how sure each score is, and whether a model beats a baseline.

Three Markdown tables: each run's metrics.json scores; the mean per-question score (samples.jsonl `score`, the
official per-question accuracy) with its question count and bootstrap interval, overall and by any field of
samples.jsonl (`--by answer_type`, `question_type`, a POPE category, the demo's question types); and each run
minus the baseline on the same questions, with a paired interval and a p-value (statistics in `stats.py`).
A difference of a few points on a few hundred questions is often noise; these say when it is not.
lmms-eval's runs (its results JSON and sample logs, `lmms/runs.py`) are read too, and paired by doc_id.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MMMergeError
from ..io import read_json, read_jsonl
from . import stats
from .lmms.runs import has_lmms_log, is_lmms_run, load_lmms_run, shared_task

# Columns shown per run: every top-level number of metrics.json and the per-answer-type scores (the
# per-question-type ones, 65 for VQAv2, stay in metrics.json). Counts are not scores.
_SKIP = {"tp", "fp", "tn", "fn", "questions"}
# samples.jsonl fields that describe an answer, not a group of questions
SAMPLE_FIELDS = {"question_id", "image", "question", "prompt", "raw", "answer", "score", "target"}
ALL = "all"


class CompareError(MMMergeError):
    """The evaluation folders cannot be compared as asked (no per-question scores, an unknown field or baseline)."""


def load_runs(outs) -> list[dict]:
    """`mmmerge eval` folders, lmms-eval runs (a folder or one samples file), or both: where any run is
    lmms-eval's, every mmmerge folder is read through the lmms-eval log `eval` wrote beside its own files, so
    all runs are scored alike and paired by doc_id."""
    paths = [Path(o) for o in outs]
    if not any(not (p / "metrics.json").is_file() and is_lmms_run(p) for p in paths):
        return [load_run(p) for p in paths]
    runs, task = [], shared_task(paths)
    for p in paths:
        if (p / "metrics.json").is_file() and not has_lmms_log(p):
            raise CompareError(f"{p}: an `mmmerge eval` folder without an lmms-eval sample log (its task has no "
                               f"lmms-eval name), so it cannot be paired with the lmms-eval runs by doc_id")
        runs.append(load_lmms_run(p, None if p.is_file() else task))
    return runs


def load_run(out) -> dict:
    out = Path(out)
    path = out / "metrics.json"
    if not path.is_file():
        raise MMMergeError(f"{path}: not found; is {out} an `mmmerge eval` output folder (or an lmms-eval run: its "
                           f"folder or a <date>_samples_<task>.jsonl)?")
    metrics = read_json(path)
    run = read_json(out / "run.json") if (out / "run.json").is_file() else {}
    scores = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in _SKIP}
    scores.update(metrics.get("perAnswerType", {}))
    headline = run.get("headline") or next((k for k in ("overall", "accuracy", "f1") if k in metrics), None)
    if headline not in scores:
        raise MMMergeError(f"{path}: no score to compare")
    samples = out / "samples.jsonl"
    rows = [checked_score(samples, n, row) for n, row in read_jsonl(samples, CompareError)] if samples.is_file() else []
    return {"name": out.name, "path": out, "task": run.get("task", "?"), "model": run.get("model", "?"),
            "headline": headline, "scores": scores, "samples": rows, "breakdown": run.get("breakdown"),
            "per_category": metrics.get(f"per_{run.get('breakdown')}", {})}


def checked_score(path: Path, line: int, row: dict) -> dict:
    """A samples.jsonl row whose `score` is a finite number, or absent/null (a question without answers)."""
    score = row.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
        raise CompareError(f"{path}: line {line}: score {json.dumps(score)} is not a finite number")
    return row


def read_files(run: dict) -> list[Path]:
    """The files of an evaluation folder that eval-compare reads."""
    return run.get("files") or [run["path"] / name for name in ("metrics.json", "run.json", "samples.jsonl")]


def check_chart_path(chart, runs: list[dict]) -> None:
    """The chart is written to a new or replaceable image file: never over a file a compared run holds, never over a
    folder, and in a format matplotlib writes (checked before any work)."""
    from matplotlib.backend_bases import FigureCanvasBase

    from ..errors import UnsafeOutputError

    chart = Path(chart)
    target = chart.resolve()
    for r in runs:
        if target == r["path"].resolve() or target in [f.resolve() for f in read_files(r)]:
            raise UnsafeOutputError(f"{chart}: the chart would replace {target.name} of the compared run {r['path']}; "
                                    "write it elsewhere")
    if chart.is_dir():
        raise UnsafeOutputError(f"{chart}: is a folder; give the chart's file name (e.g. compare.png)")
    formats = FigureCanvasBase.get_supported_filetypes()
    if chart.suffix and chart.suffix[1:].lower() not in formats:
        raise CompareError(f"{chart}: cannot write a chart as {chart.suffix} (formats: {', '.join(sorted(formats))})")


def check_same_task(runs: list[dict]) -> None:
    """Runs of different tasks share no questions worth pairing (their question ids may still coincide)."""
    tasks = {r["task"] for r in runs if r["task"] != "?"}
    if len(tasks) > 1:
        listed = ", ".join(f"{r['name']}: {r['task']}" for r in runs)
        raise CompareError(f"the runs are of different tasks ({listed}); compare runs of one task")


def markdown_table(runs: list[dict]) -> str:
    cols = list(dict.fromkeys(c for r in runs for c in [r["headline"], *r["scores"]]))
    lines = ["| run | task | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for r in runs:
        cells = [f"{r['scores'][c]:.2f}" if c in r["scores"] else "–" for c in cols]
        lines.append(f"| {r['name']} | {r['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_breakdown(runs: list[dict]) -> str | None:
    """The field every run's task breaks its score down by (MME subtasks, MMMU subjects, ...), when they agree."""
    fields = {r.get("breakdown") for r in runs}  # an lmms-eval run read from its logs names none
    return fields.pop() if len(fields) == 1 else None


def category_table(runs: list[dict]) -> str:
    """Each run's per-category scores as its task computes them (metrics.json `per_<field>`, in the task's unit:
    MME subtasks in points, acc + acc+), when the runs break down by one field."""
    field = default_breakdown(runs)
    per = {r["name"]: r.get("per_category", {}) for r in runs} if field else {}
    groups = list(dict.fromkeys(g for p in per.values() for g in p))
    if not groups:
        return ""
    names = list(per)
    lines = [f"per {field}, as the task scores it (metrics.json):", "", f"| {field} | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for g in groups:
        lines.append(f"| {g} | " + " | ".join(f"{per[n][g]:.2f}" if g in per[n] else "–" for n in names) + " |")
    return "\n".join(lines)


# ---- per-question statistics -------------------------------------------------------------------------------

def _key(question_id) -> str:
    return json.dumps(question_id)


def _label(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def scored(run: dict, by: str | None) -> dict[str, tuple[float, str]]:
    """question id -> (score, group) for the run's scored questions; the group is the `by` field's value."""
    out = {}
    for row in run["samples"]:
        if row.get("score") is None:
            continue
        if by is not None and by not in row:
            fields = sorted(set(row) - SAMPLE_FIELDS)
            where = run.get("samples_file", run["path"] / "samples.jsonl")
            raise CompareError(f"{where}: no field {by!r} to break scores down by (fields: "
                               f"{', '.join(fields) if fields else 'none; evaluate again to record them'})")
        out[_key(row.get("question_id"))] = (float(row["score"]), _label(row[by]) if by is not None else ALL)
    return out


@dataclass
class Analysis:
    runs: list[dict]
    groups: list[str]  # ALL first, then the `by` field's values in order of appearance
    by: str | None
    baseline: dict | None
    level: float
    resamples: int
    cells: dict = field(default_factory=dict)  # run name -> group -> (mean, low, high, n), fractions
    paired: dict = field(default_factory=dict)  # run name -> group -> stats.Paired (runs other than the baseline)
    unscored: list = field(default_factory=list)  # runs without per-question scores


def choose_baseline(runs: list[dict], baseline) -> dict | None:
    """The run named `baseline` (its folder, or the folder's name); the first run when not given."""
    if baseline is None:
        return runs[0] if len(runs) > 1 else None
    for r in runs:
        if str(baseline) in (r["name"], str(r["path"])) or Path(baseline).resolve() == r["path"].resolve():
            return r
    raise CompareError(f"baseline {baseline}: not among the compared folders ({', '.join(r['name'] for r in runs)})")


def analyse(runs: list[dict], *, by: str | None = None, baseline=None, level: float = stats.LEVEL,
            resamples: int = stats.RESAMPLES, seed: int = 0) -> Analysis:
    """Per run and group: mean score, bootstrap interval, count; per run and group: the paired test against the
    baseline on the questions both answered."""
    if not 0 < level < 1 or resamples < 100:
        raise CompareError(f"level must lie in (0, 1) and resamples be at least 100 (got {level}, {resamples})")
    base = choose_baseline(runs, baseline)
    table = {r["name"]: scored(r, by) for r in runs}
    groups = [ALL] + list(dict.fromkeys(g for r in runs for _, g in table[r["name"]].values())) if by else [ALL]
    a = Analysis(runs, groups, by, base, level, resamples)
    for r in runs:
        rows = table[r["name"]]
        if not rows:
            a.unscored.append(r["name"])
            continue
        a.cells[r["name"]] = {}
        for g in groups:
            xs = [s for s, grp in rows.values() if g == ALL or grp == g]
            if xs:
                lo, hi = stats.bootstrap_ci(xs, level=level, resamples=resamples, seed=seed)
                a.cells[r["name"]][g] = (sum(xs) / len(xs), lo, hi, len(xs))
    if base is not None and base["name"] in a.cells:
        ref = table[base["name"]]
        for r in runs:
            if r is base or r["name"] not in a.cells:
                continue
            rows = table[r["name"]]
            a.paired[r["name"]] = {}
            for g in groups:
                both = [q for q, (_, grp) in ref.items() if (g == ALL or grp == g) and q in rows]
                if both:
                    a.paired[r["name"]][g] = stats.paired_test([rows[q][0] for q in both], [ref[q][0] for q in both],
                                                               level=level, resamples=resamples, seed=seed)
    return a


def _p(p: float, resamples: int, test: str) -> str:
    if p == 0.0 and test != "McNemar exact":
        return f"p<{1 / resamples:g}"
    return f"p={p:.1e}" if p < 1e-3 else f"p={p:.3f}"


def score_table(a: Analysis) -> str:
    """Rows: overall and each group; columns: the question count and each run's mean score [interval], in %."""
    names = [r["name"] for r in a.runs if r["name"] in a.cells]
    lines = [f"mean score per question (%) with its {a.level:.0%} bootstrap interval ({a.resamples:,} resamples)"
             + (f", by {a.by}" if a.by else "") + ":", "",
             f"| {a.by or 'questions'} | n | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for g in a.groups:
        counts = {a.cells[n][g][3] for n in names if g in a.cells[n]}
        n_text = str(counts.pop()) if len(counts) == 1 else "varies"
        cells = []
        for n in names:
            c = a.cells[n].get(g)
            cells.append("–" if c is None else f"{100 * c[0]:.1f} [{100 * c[1]:.1f}, {100 * c[2]:.1f}]"
                         + ("" if n_text != "varies" else f" (n={c[3]})"))
        lines.append(f"| {g} | {n_text} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(a: Analysis) -> str:
    """Rows: overall and each group; columns: each run minus the baseline, in points, [interval], p-value."""
    names = list(a.paired)
    if not any(a.paired.values()):
        return (f"difference to the baseline {a.baseline['name']}: no shared questions (no question id of "
                f"{', '.join(names)} is among the baseline's), so no paired test")
    tests = {n: ", ".join(sorted({p.test for p in a.paired[n].values()})) for n in names if a.paired[n]}
    used = set(tests.values())
    how = used.pop() if len(used) == 1 else "; ".join(f"{n}: {t}" for n, t in tests.items())
    lines = [f"difference to the baseline {a.baseline['name']} on the same questions (points), "
             f"{a.level:.0%} paired bootstrap interval, p-value ({how}):", "",
             f"| {a.by or 'questions'} | " + " | ".join(f"{n} − {a.baseline['name']}" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for g in a.groups:
        cells = []
        for n in names:
            p = a.paired[n].get(g)
            if not a.paired[n]:
                cells.append("no shared questions")
                continue
            cells.append("–" if p is None else f"{100 * p.difference:+.1f} [{100 * p.low:+.1f}, {100 * p.high:+.1f}] "
                         f"{_p(p.p_value, a.resamples, p.test)} (n={p.questions})")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(a: Analysis) -> str:
    parts = []
    if a.cells:
        parts.append(score_table(a))
    if a.paired:
        parts.append(paired_table(a))
    if a.unscored:
        parts.append(f"no per-question scores (no samples.jsonl, or no answers to score against) in: "
                     f"{', '.join(a.unscored)}")
    return "\n\n".join(parts)


# ---- the chart -------------------------------------------------------------------------------------------------

def write_chart(runs: list[dict], a: Analysis, path) -> Path:
    """Per-question means with intervals and significance stars where every run has scores; else each run's
    metrics.json scores (the headline first), as bars without intervals."""
    from . import chart

    names = [r["name"] for r in runs]
    base = a.baseline["name"] if a.baseline is not None else None
    if not a.unscored:
        groups = a.groups[:chart.MAX_GROUPS + 1]
        values = {n: {g: 100 * c[0] for g, c in a.cells[n].items()} for n in names}
        intervals = {n: {g: (100 * c[1], 100 * c[2]) for g, c in a.cells[n].items()} for n in names}
        significant = {n: {g: p.p_value < chart.SIGNIFICANCE for g, p in a.paired.get(n, {}).items()} for n in names}
        fig = chart.draw(groups, names, values, intervals=intervals, baseline=base, significant=significant,
                         ylabel="mean score per question (%)", level=a.level)
    else:
        shared = [c for c in [runs[0]["headline"], *runs[0]["scores"]] if all(c in r["scores"] for r in runs)]
        shared = list(dict.fromkeys(shared))[:chart.MAX_GROUPS] or [runs[0]["headline"]]
        values = {r["name"]: {c: r["scores"].get(c) for c in shared} for r in runs}
        fig = chart.draw(shared, names, values, baseline=base)
    return chart.save(fig, path)


def compare(outs, chart=None, *, baseline=None, by: str | None = None, level: float = stats.LEVEL,
            resamples: int = stats.RESAMPLES, seed: int = 0) -> str:
    """The Markdown report for the evaluation folders `outs`: metrics, per-question scores with intervals (by the
    samples.jsonl field `by` too), each run against `baseline` (a folder or its name; default the first run).
    Writes the bar chart PNG when `chart` is given. Deterministic for a `seed`."""
    runs = load_runs(outs)
    if not runs:
        raise MMMergeError("give at least one evaluation folder")
    check_same_task(runs)
    by = by if by is not None else default_breakdown(runs)
    if chart is not None:
        check_chart_path(chart, runs)
    if len({r["name"] for r in runs}) < len(runs):  # folders of one name in different places: name them by path
        for r in runs:
            r["name"] = str(r["path"])
    a = analyse(runs, by=by, baseline=baseline, level=level, resamples=resamples, seed=seed)
    if (by is not None or baseline is not None) and a.unscored:
        raise CompareError(f"{a.unscored[0]}: no per-question scores to break down or test (samples.jsonl missing, "
                           "or questions without answers)")
    if chart is not None:
        write_chart(runs, a, chart)
    parts = [markdown_table(runs), category_table(runs), report(a)]
    return "\n\n".join(p for p in parts if p)
