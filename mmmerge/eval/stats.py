"""How sure a score is: bootstrap confidence intervals of a mean, and paired tests of two models on one set.

Per-question scores take few distinct values (0/1, or VQA's 0, 1/3, 2/3, 1 ...). Resampling n questions with
replacement then amounts to drawing how many of each value come out: a multinomial over the distinct values
with their frequencies. Drawing that multinomial gives exactly the bootstrap distribution of the mean at a cost
independent of n, so 10,000 resamples of VQAv2's 214k questions take milliseconds. Paired comparisons resample
the per-question differences the same way (questions are resampled, both models' answers travel together).

McNemar's exact test (a two-sided binomial test on the discordant pairs) is used where both models' scores are
right/wrong; fractional scores (VQA accuracy) get the paired bootstrap's two-sided p-value instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95


def _bootstrap_means(values, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` bootstrap resamples of `values` (drawn as a multinomial over the distinct values)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to resample")
    distinct, counts = np.unique(x, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(x.size, counts / x.size, size=resamples)
    return draws @ distinct / x.size


def _interval(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def bootstrap_ci(values, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap confidence interval of the mean of `values`."""
    return _interval(_bootstrap_means(values, resamples, seed), level)


def mcnemar_exact(a, b) -> tuple[int, int, float]:
    """(a right where b is wrong, b right where a is wrong, two-sided exact p-value) for right/wrong scores a, b."""
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return only_a, only_b, 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # P(X <= k), X ~ Binomial(n, 1/2)
    return only_a, only_b, min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    """Model minus baseline on the same questions, in score units (fractions); `test` names the p-value's test."""
    questions: int
    difference: float
    low: float
    high: float
    p_value: float
    test: str


def is_binary(values) -> bool:
    return bool(np.isin(np.asarray(values, dtype=np.float64), (0.0, 1.0)).all())


def paired_test(model, baseline, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Paired:
    """The mean difference of paired per-question scores, its paired bootstrap interval, and a p-value:
    McNemar's exact test for right/wrong scores, else the paired bootstrap's (how often a resampled
    difference, centred on the observed one, lies at least as far from it as the observed one lies from 0)."""
    a, b = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired scores must be two equally long, non-empty lists")
    d = a - b
    means = _bootstrap_means(d, resamples, seed)
    lo, hi = _interval(means, level)
    observed = float(d.mean())
    if is_binary(a) and is_binary(b):
        p, test = mcnemar_exact(a, b)[2], "McNemar exact"
    else:
        p = float(np.mean(np.abs(means - observed) >= abs(observed) - 1e-12)) if observed != 0 else 1.0
        test = "paired bootstrap"
    return Paired(int(a.size), observed, lo, hi, p, test)
