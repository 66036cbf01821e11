"""Task-vector methods: task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs(_ties), della(_linear).

Each is  base + lambda · Σᵢ wᵢ·sparsify(θᵢ − base) [· agreement mask] [/ normaliser], with mergekit 0.1.5's
choices of sparsifier, sign consensus and defaults:

| method            | sparsifier               | sign consensus | normalize | rescale (L1) |
|-------------------|--------------------------|----------------|-----------|--------------|
| task_arithmetic   | none                     | no             | false     | false        |
| ties              | largest magnitude        | yes            | true      | false        |
| dare_linear       | random (Bernoulli)       | no             | false     | true         |
| dare_ties         | random (Bernoulli)       | yes            | false     | true         |
| breadcrumbs       | drop outliers + smallest | no             | false     | false        |
| breadcrumbs_ties  | drop outliers + smallest | yes            | false     | false        |
| della             | random by magnitude rank | yes            | true      | true         |
| della_linear      | random by magnitude rank | no             | false     | true         |

The normaliser is Σ wᵢ (over the models agreeing with the elected sign, per entry, under consensus;
a zero normaliser counts as 1). ``int8_mask`` (all) and ``density`` (task_arithmetic) are accepted for
mergekit compatibility and change nothing.
"""

from __future__ import annotations

import torch

from ._common import (
    BOOL_FALSE,
    DENSITY,
    WEIGHT,
    check_della_epsilon,
    keep_largest,
    keep_middle,
    keep_random,
    keep_random_by_rank,
)
from ._registry import MethodSpec, Param, register


def _none(delta, p, rescale, generator):
    return delta


def _magnitude(delta, p, rescale, generator):
    return keep_largest(delta, p["density"], rescale)


def _random(delta, p, rescale, generator):
    return keep_random(delta, p["density"], rescale, generator)


def _outliers(delta, p, rescale, generator):
    return keep_middle(delta, p["density"], p["gamma"], rescale)


def _rank(delta, p, rescale, generator):
    return keep_random_by_rank(delta, p["density"], p["epsilon"], rescale, generator)


def _merge(tensors, base, params, global_params, generator, *, sparsify, consensus):
    """One model at a time and in place where the buffers are our own: besides the base, the peak is the
    task vectors plus one accumulator (a stacked [n, ...] form would need about three times that)."""
    if not len(tensors):
        return base
    rescale = global_params["rescale"]
    weights = [p["weight"] for p in params]
    deltas = []
    inputs = iter(tensors)  # not zip(): its reused result tuple would keep the last input alive
    # Models are sparsified one after another, in input order: this is mergekit's draw order.
    for p in params:
        delta = next(inputs) - base
        deltas.append(sparsify(delta, p, rescale, generator).mul_(p["weight"]))
        del delta
    if consensus:
        total = deltas[0].clone()
        for d in deltas[1:]:
            total.add_(d)
        positive = total >= 0  # the elected sign (0 counts as +); zero entries never agree
        del total
        mixed = divisor = None
        for w in weights:
            d = deltas.pop(0)
            agree = torch.where(positive, d > 0, d < 0)
            d.masked_fill_(~agree, 0.0)
            if mixed is None:  # the first task vector's buffer becomes the sum
                mixed, divisor = d, agree.to(base.dtype).mul_(w)
            else:
                mixed.add_(d)
                divisor.add_(agree, alpha=w)
            del d, agree
        divisor.masked_fill_(divisor == 0, 1.0)
    else:
        mixed = deltas.pop(0)
        while deltas:
            mixed.add_(deltas.pop(0))
        divisor = sum(torch.tensor(w, dtype=base.dtype) for w in weights)
        divisor = 1.0 if divisor.abs() < 1e-8 else divisor
    if global_params["normalize"]:
        mixed.div_(divisor)
    if global_params["lambda"] != 1:
        mixed.mul_(global_params["lambda"])
    return mixed.add_(base)


def _family_member(name, sparsify, consensus, normalize, rescale, extra=None, check=None, reference=""):
    def fn(tensors, base, params, global_params, generator=None):
        return _merge(tensors, base, params, global_params, generator, sparsify=sparsify, consensus=consensus)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"{name}: task-vector merge (see mmmerge.methods.task_arithmetic)."
    # task_arithmetic accepts `density` and ignores it, as mergekit does.
    model_params = {"weight": WEIGHT, "density": DENSITY, **(extra or {})}
    register(
        MethodSpec(
            name=name,
            fn=fn,
            model_params=model_params,
            global_params={
                "normalize": Param(bool, normalize, help="divide by the sum of weights"),
                "rescale": Param(bool, rescale, help="restore each task vector's L1 norm after sparsifying"),
                "lambda": Param(float, 1.0, help="scale of the merged task vector"),
                "int8_mask": BOOL_FALSE,
            },
            base="required",
            random=sparsify in (_random, _rank),
            one_pass=True,
            check=check,
            reference=reference,
        )
    )
    return fn


GAMMA = Param(float, 0.01, low=0.0, high=1.0, help="fraction of largest-magnitude entries dropped")
EPSILON = Param(float, 0.15, low=0.0, high=1.0, high_open=True, help="spread of keep probabilities around density")

task_arithmetic = _family_member("task_arithmetic", _none, False, False, False, reference="https://arxiv.org/abs/2212.04089")
ties = _family_member("ties", _magnitude, True, True, False, reference="https://arxiv.org/abs/2306.01708")
dare_ties = _family_member("dare_ties", _random, True, False, True, reference="https://arxiv.org/abs/2311.03099")
dare_linear = _family_member("dare_linear", _random, False, False, True, reference="https://arxiv.org/abs/2311.03099")
breadcrumbs = _family_member(
    "breadcrumbs", _outliers, False, False, False, {"gamma": GAMMA}, reference="https://arxiv.org/abs/2312.06795"
)
breadcrumbs_ties = _family_member(
    "breadcrumbs_ties", _outliers, True, False, False, {"gamma": GAMMA}, reference="https://arxiv.org/abs/2312.06795"
)
della = _family_member(
    "della", _rank, True, True, True, {"epsilon": EPSILON}, check_della_epsilon, "https://arxiv.org/abs/2406.11617"
)
della_linear = _family_member(
    "della_linear", _rank, False, False, True, {"epsilon": EPSILON}, check_della_epsilon, "https://arxiv.org/abs/2406.11617"
)
