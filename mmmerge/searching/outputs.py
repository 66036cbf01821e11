"""What a search leaves beside its study: the best recipe, the table of trials, two plots and result.json."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import optuna
import yaml

from ..hub import is_hub_id

PATH_KEYS = ("model", "base_model", "source", "tokenizer_source", "statistics")


def portable_recipe(recipe: dict, folder: Path | None) -> dict:
    """The recipe with every relative input path made absolute (it is written into another folder than the spec's,
    and a relative path there would name other files)."""
    def fix(node):
        if isinstance(node, dict):
            return {k: (absolute(v) if k in PATH_KEYS and isinstance(v, str) else fix(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    def absolute(ref: str) -> str:
        parts = ref.split("+")  # BASE+LORA
        out = []
        for part in parts:
            p = Path(part).expanduser()
            if not p.is_absolute():
                at = (folder / p) if folder is not None else p
                if at.exists() or not is_hub_id(part):
                    p = at.absolute()
            out.append(str(p) if p.is_absolute() else part)
        return "+".join(out)

    return fix(recipe)


def recipe_yaml(recipe: dict, header: str) -> str:
    return header + yaml.safe_dump(recipe, sort_keys=False)


def trials_csv(study: optuna.Study) -> str:
    """One row per trial: number, state, value, seconds, every searched value and every recorded score."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({p for t in trials for p in t.params})
    attrs = sorted({a for t in trials for a in t.user_attrs if not isinstance(t.user_attrs[a], (dict, list))})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "state", "value", "seconds", *params, *attrs])
    for t in trials:
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value, secs,
                    *[t.params.get(p, "") for p in params], *[t.user_attrs.get(a, "") for a in attrs]])
    return buf.getvalue()


def plot_history(study: optuna.Study, path: Path, objective: str) -> bool:
    """The objective of every trial and the best so far; False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [t.number for t in done]
    ys = [t.value for t in done]
    best = [max(ys[:i + 1]) for i in range(len(ys))]
    ax.plot(xs, ys, "o", color="tab:blue", label="trial")
    ax.step(xs, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"objective ({objective}, dev split)")
    ax.set_title("Merge search: objective per trial")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_importance(study: optuna.Study, path: Path) -> str | None:
    """The searched values' importances (optuna's PED-ANOVA: how much each one decides which trials are among the
    best); when they cannot be computed, a plot that says why, and the reason. Trials that all scored the same say
    nothing about what matters (PED-ANOVA would draw equal bars), so they get the note too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    why = _why_no_importance(study)
    importances = {}
    if why is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        except (RuntimeError, ValueError) as e:
            why = str(e).splitlines()[0]
        if not importances and why is None:
            why = "no searched value varied"
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(len(importances), 2)))
    if why is None:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        for i, n in enumerate(names):
            ax.text(importances[n], i, f" {importances[n]:.2f}", va="center")
        ax.set_xlabel("importance (optuna PED-ANOVA)")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, f"no importance: {why}", ha="center", va="center", wrap=True)
    ax.set_title("Merge search: which searched values matter")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return why


def _why_no_importance(study: optuna.Study) -> str | None:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return "fewer than two finished trials"
    if len({t.value for t in done}) == 1:
        return "all trials scored the same"
    return None


def result_json(data: dict) -> str:
    return json.dumps(data, indent=2) + "\n"
