"""The optuna samplers a spec names (`search.sampler`): one function each, `(seed, settings) -> sampler`.

Each parallel process passes its own seed (study.make_sampler), so processes do not propose the same points.
"""

from __future__ import annotations

import optuna

from .registry import Registry

SAMPLERS = Registry("sampler")


@SAMPLERS.register("tpe")
def tpe(seed: int, settings) -> optuna.samplers.BaseSampler:
    """Tree-structured Parzen estimator, after a few random trials (a quarter of the budget, 2 to 10)."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, (settings.trials or 20) // 4)))


@SAMPLERS.register("cmaes")
def cmaes(seed: int, settings) -> optuna.samplers.BaseSampler:
    """CMA-ES over the ranges (choices are sampled at random beside it, without a warning per trial)."""
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


@SAMPLERS.register("random")
def random(seed: int, settings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)
