"""The study driver of `mmmerge search`: the spec parsed, the candidates' model built once, every end of the space
planned, trials taken (by this process and any others on the same storage), then the outputs written by the
process that owns the study."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna

from ..errors import MMMergeError, RecipeError
from ..io.atomic import atomic_write_text
from ..io.claim import claim_output
from ..io.guard import MARKER, check_not_over_inputs, is_previous_output, write_marker
from ..signals import deferred_signals
from . import outputs, study as S
from .candidate import Candidates
from .objectives import OBJECTIVES, Candidate, Scorer
from .space import active, bind, lowest
from .spec import Spec, fingerprint, load_spec


@dataclass
class SearchResult:
    out: Path | None
    best_params: dict
    best_value: float
    best_recipe: dict
    dev_scores: dict = field(default_factory=dict)
    test_scores: dict = field(default_factory=dict)
    trials: int = 0


def _ranks() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def check_space(spec: Spec, candidates: Candidates) -> None:
    """Every end of every range and every choice plans (the method accepts it) before any trial runs: all
    values at their low ends, then each one at its other ends."""
    low = lowest(spec.dimensions)

    def plans(values: dict, what: str) -> None:
        try:
            candidates.plan(bind(spec.recipe, spec.dimensions, values))
        except MMMergeError as e:
            raise RecipeError(f"{spec.where}: {what} does not make a valid recipe: {e}") from None

    plans(low, "the searched values at the low ends of their ranges")
    for d in spec.dimensions:
        ends = list(d.choices[1:]) if d.choices is not None else [int(d.high) if d.integer else d.high]
        for p in ends:
            plans({**low, d.name: p}, f"searched value {d.name} = {p!r}")


class Objective:
    """One trial: the candidate's values, its merge in memory, its score."""

    def __init__(self, spec: Spec, candidates: Candidates, scorer: Scorer | None, *, say, custom=None,
                 budget: int | None = None):
        self.spec, self.candidates, self.scorer, self.say, self.custom = spec, candidates, scorer, say, custom
        self.budget = budget
        self.score = OBJECTIVES.find(spec.settings.objective)

    def values(self, trial) -> dict:
        dims = self.spec.dimensions
        chosen = {d.name: d.suggest(trial) for d in dims if d.parameter is None}  # methods first: they decide the rest
        for d in active(dims, self.spec.recipe, chosen):
            if d.name not in chosen:
                chosen[d.name] = d.suggest(trial)
        return chosen

    def __call__(self, trial) -> float:
        if self.budget is not None and S.finished(trial.study) >= self.budget:
            trial.study.stop()  # met by other processes while this one asked for a trial: run no more
            raise optuna.TrialPruned("the study had its trials")
        values = self.values(trial)
        self.load(values)
        trial.set_user_attr("process", f"{socket.gethostname()}:{os.getpid()}")
        if self.custom is not None:
            value = float(self.custom(self.candidates.model, self.candidates.processor))
        else:
            value = float(self.score(Candidate(values, self.spec.dimensions, self.spec.settings, self.scorer,
                                               record=trial.set_user_attr, load=self.load)))
        self.say(f"trial {trial.number}: {value:.4g}  " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
        return value

    def load(self, values: dict) -> None:
        """Merge the candidate with these searched values into the model in memory."""
        self.candidates.load(bind(self.spec.recipe, self.spec.dimensions, values))


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def check_budget(trials: int | None, timeout: float | None) -> None:
    """A budget given beside the spec's must let a trial run: `trials` at least 1, `timeout` above 0."""
    from ..validate import finite_number, integer

    if trials is not None:
        integer("trials", trials, low=1)
    if timeout is not None:
        finite_number("timeout", timeout, low=0, low_open=True)


def search(spec: str | Path | dict, out: str | Path, *, device: str = "cpu", trials: int | None = None,
           timeout: float | None = None, storage: str | None = None, worker: bool = False, write_model: bool = False,
           force: bool = False, quiet: bool = False, offline: bool | None = None,
           objective: Callable | None = None) -> SearchResult | None:
    """Search the spec's ranges; write OUT/best_recipe.yml, trials.csv, history.png, importance.png, result.json
    (and OUT/model with `write_model`). Run again on the same OUT to resume. `storage`: an optuna storage URL
    that other processes share (default: SQLite in OUT); `worker`: only take trials of that study (another
    process writes the outputs). Under torchrun every rank takes trials and rank 0 writes. Returns the result
    (None for a worker or a rank other than 0).
    `objective(model, processor) -> float` (Python only) replaces the spec's objective: the search maximises it
    over the candidates, each merged into `model` in memory."""
    check_budget(trials, timeout)
    parsed = load_spec(spec, custom_objective=objective is not None)
    rank, world = _ranks()
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    out = Path(out)
    say = (lambda text: None) if quiet or rank else (lambda text: print(text, flush=True))
    S.quiet_optuna()
    url = storage or S.default_storage(out)
    helper = worker or rank != 0
    if storage is not None or (out / "study.db").is_file():
        S.check_storage(url)  # before anything opens it for writing
    budget = trials or parsed.settings.trials
    if helper:
        candidates, scorer = _prepare(parsed, device=device, offline=offline)
        if storage is None:  # the main process makes OUT and the study in it
            S.wait_for_file(out / "study.db", also=out / MARKER)
        study = S.open_study(parsed.settings, url, rank=rank or 1, create=False)
        S.check_spec(study, fingerprint(parsed), storage or str(out), record=False)
        S.run_trials(study, Objective(parsed, candidates, scorer, say=say, custom=objective, budget=budget),
                     parsed.settings, trials=trials, timeout=timeout)
        return None
    resuming = out.is_dir() and is_previous_output(out) and (out / "study.db").is_file() and not force
    data = [spec] if isinstance(spec, (str, Path)) else []
    data += [f for split in parsed.splits for f in split.files]
    stored = S.storage_file(url) if storage is not None else None  # None: a database server, or OUT's own
    if stored is not None and stored.absolute() != (out / "study.db").absolute():
        data.append(stored)
    with claim_output(out, force=force and not resuming, data=data, deferred_check=resuming) as target:
        def guard(candidates: Candidates) -> None:  # once every candidate is planned: the models and files read
            check_not_over_inputs(out, inputs=candidates.inputs, data=[*data, *candidates.data])

        candidates, scorer = _prepare(parsed, device=device, offline=offline, guard=guard)
        for w in candidates.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if not resuming:
            with deferred_signals():
                if target.exists():
                    shutil.rmtree(target)
                target.mkdir(parents=True)
                write_marker(target)
        study = S.open_study(parsed.settings, url, rank=0, create=True)
        S.check_spec(study, fingerprint(parsed), storage or str(out), record=True)
        if resuming and world == 1 and storage is None:
            abandoned = S.fail_abandoned(study)
            say(f"resuming: {S.finished(study)} finished trial(s) kept" +
                (f", {abandoned} left running by a stopped run failed" if abandoned else ""))
        S.run_trials(study, Objective(parsed, candidates, scorer, say=say, custom=objective, budget=budget),
                     parsed.settings, trials=trials, timeout=timeout)
        S.wait_for_others(study)
        return _write_outputs(parsed, study, candidates, scorer, target, write_model=write_model, device=device,
                              say=say)


def _prepare(spec: Spec, *, device: str, offline: bool | None,
             guard: Callable[[Candidates], None] | None = None) -> tuple[Candidates, Scorer | None]:
    """The model candidates merge into (built once) and what scores them (None when the caller scores). With
    `guard` (the process that owns the study), every end of the space is planned first, then `guard` checks what
    the candidates read, before the model is built."""
    candidates = Candidates(spec.folder, device=device, seed=spec.settings.merge_seed, offline=offline)
    if guard is not None:
        check_space(spec, candidates)
        guard(candidates)
    candidates.build(bind(spec.recipe, spec.dimensions, lowest(spec.dimensions)))
    scorer = None
    if spec.splits:
        scorer = Scorer(candidates.model, candidates.processor, spec.splits, batch_size=spec.settings.batch_size,
                        max_new_tokens=spec.settings.max_new_tokens)
    return candidates, scorer


def _write_outputs(spec: Spec, study, candidates: Candidates, scorer: Scorer, out: Path, *, write_model: bool,
                   device: str, say) -> SearchResult:
    from .. import __version__

    if S.finished(study) == 0:
        raise RecipeError(f"{out}: the search finished no trial (budget too small?)")
    best = study.best_trial
    recipe = outputs.portable_recipe(bind(spec.recipe, spec.dimensions, best.params), spec.folder)
    candidates.load(recipe)
    labelled = scorer is not None and any(s.dev[0].target is not None for s in spec.splits)
    dev = scorer.task_scores("dev") if labelled else {}
    test = scorer.task_scores("test") if scorer is not None and any(s.test for s in spec.splits) else {}
    header = (f"# written by mmmerge {__version__} search: trial {best.number} of {len(study.trials)}, "
              f"{spec.settings.objective} {best.value:.6g} on the dev split\n")
    atomic_write_text(out / "best_recipe.yml", outputs.recipe_yaml(recipe, header))
    atomic_write_text(out / "trials.csv", outputs.trials_csv(study))
    outputs.plot_history(study, out / "history.png", spec.settings.objective)
    why_no_importance = outputs.plot_importance(study, out / "importance.png")
    result = {
        "objective": spec.settings.objective, "sampler": spec.settings.sampler, "seed": spec.settings.seed,
        "trials": {s.name.lower(): n for s in S.TrialState
                   if (n := len(study.get_trials(deepcopy=False, states=(s,))))},
        "best_trial": best.number, "best_value": best.value, "best_params": best.params,
        "dev_scores": dev, "test_scores": test,
        "questions": {s.task.name: {"dev": len(s.dev), "test": len(s.test)} for s in spec.splits},
        "searched": [{"name": d.name, **({"choice": list(d.choices)} if d.choices else
                                         {"low": d.low, "high": d.high, "log": d.log})} for d in spec.dimensions],
        "importance": None if why_no_importance else "importance.png",
        "importance_note": why_no_importance, "mmmerge": __version__,
    }
    atomic_write_text(out / "result.json", outputs.result_json(result))
    if write_model:
        from ..engine import merge

        merge(recipe, out / "model", device=device, seed=spec.settings.merge_seed, quiet=True, force=True,
              across_ranks=False)  # rank 0 alone, under torchrun too
    say(f"best: trial {best.number}, {spec.settings.objective} {best.value:.4g} (dev)"
        + (f"; test {', '.join(f'{k} {v:.4g}' for k, v in test.items())}" if test else "")
        + f"; wrote {out / 'best_recipe.yml'}")
    return SearchResult(out, dict(best.params), float(best.value), recipe, dev, test, S.finished(study))

