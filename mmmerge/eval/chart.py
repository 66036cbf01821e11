"""The eval-compare bar chart: one group of bars per score, one bar per run, every mark in the legend.

A chart read without the table must not mislead: the baseline's bars are hatched and named so in the legend,
a bar of height zero gets a "0" (an empty slot looks like a missing run), confidence intervals are error bars
with their own legend entry, and a star above a bar (also in the legend) marks a run that differs from the
baseline at p < 0.05.
"""

from __future__ import annotations

from pathlib import Path

SIGNIFICANCE = 0.05
MAX_GROUPS = 16  # more groups than this make bars too thin to read; the table holds them all


def draw(groups: list[str], runs: list[str], values: dict, *, intervals: dict | None = None, baseline: str | None = None,
         significant: dict | None = None, ylabel: str = "score (%)", level: float = 0.95):
    """The figure. `values[run][group]`: a bar's height (None: no bar); `intervals[run][group]`: (low, high) or
    None; `significant[run][group]`: True where the run differs from the baseline. Returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    intervals, significant = intervals or {}, significant or {}
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(groups) * max(1.0, len(runs) / 2.5) + 2.5), 3.8))
    top = 100.0
    any_interval = any_star = False
    for i, run in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(groups))]
        heights = [values[run].get(g) for g in groups]
        shown = [(x, h) for x, h in zip(xs, heights) if h is not None]
        is_base = run == baseline
        bars = ax.bar([x for x, _ in shown], [h for _, h in shown], width, label=f"{run} (baseline)" if is_base else run,
                      hatch="//" if is_base else None, edgecolor="black" if is_base else None, linewidth=0.8)
        color = bars.patches[0].get_facecolor() if bars.patches else None
        for x, g in zip(xs, groups):
            ci = intervals.get(run, {}).get(g)
            h = values[run].get(g)
            if ci is not None and h is not None:
                ax.errorbar([x], [h], yerr=[[h - ci[0]], [ci[1] - h]], fmt="none", ecolor="black", capsize=2, lw=0.8)
                any_interval = True
                top = max(top, ci[1])
            if h is not None and h == 0:
                ax.annotate("0", (x, 0), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                            fontsize=7, color=color)
            if h is not None and significant.get(run, {}).get(g):
                y = ci[1] if ci is not None else h
                ax.annotate("*", (x, y), xytext=(0, 10 if h == 0 else 1), textcoords="offset points", ha="center",
                            va="bottom", fontsize=10)
                any_star = True
    slanted = len(groups) > 3
    ax.set_xticks(range(len(groups)), groups, rotation=20 if slanted else 0, ha="right" if slanted else "center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top * 1.08)
    handles, labels = ax.get_legend_handles_labels()
    if any_interval:
        handles.append(Line2D([0], [0], color="black", lw=0.8, marker="_", markersize=8))
        labels.append(f"{level:.0%} bootstrap interval")
    if any_star:
        handles.append(Line2D([0], [0], color="black", lw=0, marker="*", markersize=8))
        labels.append(f"differs from the baseline (p < {SIGNIFICANCE})")
    ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
