"""ram and ramplus_tl: Reinforced Agent Merging (tensor-local), mergekit 0.1.5 semantics.

An entry of a task vector "contributes" when |δ| > epsilon. Entries only one model contributes to are
taken as they are; entries several models contribute to are averaged over the contributors. ramplus_tl
also scales each model's unique entries by 1 + r · clamp(shared/unique, 0, alpha), where shared and
unique count that model's contributing entries in this tensor.
"""

from __future__ import annotations

import torch

from ._registry import Param, method
from . import native_others  # the same method in mergekit's order of operations (half precision)

EPSILON = Param(float, 1e-5, low=0.0, help="entries with |delta| at most this do not contribute")
# ramplus_tl divides by max(unique count, epsilon): epsilon 0 would give 0/0 = NaN for a model with no entries.
EPSILON_POSITIVE = Param(float, 1e-5, low=0.0, low_open=True, help=EPSILON.help)


def _ram(tensors, base, epsilon, r=None, alpha=None):
    if not tensors:
        return base
    deltas = torch.stack([t - base for t in tensors]).reshape(len(tensors), -1)
    active = deltas.abs() > epsilon
    counts = active.sum(dim=0, keepdim=True)
    unique, shared = counts == 1, counts > 1
    kept = deltas * active
    unique_part = kept * unique
    if r is not None:
        ratio = (active & shared).sum(dim=1) / (active & unique).sum(dim=1).clamp(min=epsilon)
        unique_part = unique_part * (1 + r * ratio.clamp(min=0, max=alpha)).unsqueeze(-1)
    merged = (unique_part + kept * shared / counts.clamp(min=1)).sum(dim=0)
    return base + merged.reshape(base.shape)


@method("ram", native=native_others.ram, global_params={"epsilon": EPSILON}, base="required", reference="https://arxiv.org/abs/2601.13572")
def ram(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    return _ram(tensors, base, global_params["epsilon"])


@method(
    "ramplus_tl", native=native_others.ramplus_tl,
    global_params={
        "r": Param(float, 0.1, low=0.0, help="strength of the boost for unique entries"),
        "alpha": Param(float, 0.2, low=0.0, help="cap on the shared/unique ratio"),
        "epsilon": EPSILON_POSITIVE,
    },
    base="required",
    reference="https://arxiv.org/abs/2601.13572",
)
def ramplus_tl(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    return _ram(tensors, base, global_params["epsilon"], global_params["r"], global_params["alpha"])
