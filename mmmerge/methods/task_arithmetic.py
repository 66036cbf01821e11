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
    sign_consensus,
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
    if not tensors:
        return base
    rescale = global_params["rescale"]
    # Models are sparsified one after another, in input order: this is mergekit's draw order.
    deltas = torch.stack([sparsify(t - base, p, rescale, generator) for t, p in zip(tensors, params)])
    weights = torch.tensor([p["weight"] for p in params], dtype=deltas.dtype, device=deltas.device)
    weights = weights.reshape(-1, *([1] * base.dim()))
    deltas = deltas * weights
    if consensus:
        agree = sign_consensus(deltas)
        mixed = (deltas * agree).sum(dim=0)
        divisor = (weights * agree).sum(dim=0)
        divisor = torch.where(divisor == 0, 1.0, divisor)
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor = torch.where(divisor.abs() < 1e-8, 1.0, divisor)
    if global_params["normalize"]:
        mixed = mixed / divisor
    if global_params["lambda"] != 1:
        mixed = mixed * global_params["lambda"]
    return base + mixed


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
