"""ram and ramplus_tl: Reinforced Agent Merging (tensor-local), mergekit 0.1.5 semantics.

An entry of a task vector "contributes" when |δ| > epsilon. Entries only one model contributes to are
taken as they are; entries several models contribute to are averaged over the contributors. ramplus_tl
also scales each model's unique entries by 1 + r · clamp(shared/unique, 0, alpha), where shared and
unique count that model's contributing entries in this tensor.
"""

from __future__ import annotations

import torch

from ._registry import Param, method

EPSILON = Param(float, 1e-5, low=0.0, help="entries with |delta| at most this do not contribute")
# ramplus_tl divides by max(unique count, epsilon): epsilon 0 would give 0/0 = NaN for a model with no entries.
EPSILON_POSITIVE = Param(float, 1e-5, low=0.0, low_open=True, help=EPSILON.help)


def ram_parts(tensors, base, epsilon):
    """The flat task vectors, where each contributes (|δ| > epsilon), and the entries shared or unique."""
    flat = torch.stack([t - base for t in tensors], dim=0).view(len(tensors), -1)
    nonzero = flat.abs() > epsilon
    counts = nonzero.sum(dim=0, keepdim=True)
    return flat, nonzero, counts, counts > 1, counts == 1


@method("ram", native=True, global_params={"epsilon": EPSILON}, base="required",
        title="Behavior Knowledge Merge in Reinforced Agentic Models (RAM; Yuan et al., 2026)",
        reference="https://arxiv.org/abs/2601.13572")
def ram(tensors, base, params, global_params, generator=None):
    if not tensors:
        return base
    flat, nonzero, counts, shared, unique = ram_parts(tensors, base, global_params["epsilon"])
    kept = flat * nonzero
    merged = ((kept * unique) + (kept * shared / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


@method(
    "ramplus_tl", native=True,
    global_params={
        "r": Param(float, 0.1, low=0.0, help="strength of the boost for unique entries"),
        "alpha": Param(float, 0.2, low=0.0, help="cap on the shared/unique ratio"),
        "epsilon": EPSILON_POSITIVE,
    },
    base="required",
    title="Behavior Knowledge Merge in Reinforced Agentic Models (RAM+, tensor-local; Yuan et al., 2026)",
    reference="https://arxiv.org/abs/2601.13572",
)
def ramplus_tl(tensors, base, params, global_params, generator=None):
    if not tensors:
        return base
    eps = global_params["epsilon"]
    flat, nonzero, counts, shared, unique = ram_parts(tensors, base, eps)
    rho = (nonzero & shared).sum(dim=1) / (nonzero & unique).sum(dim=1).clamp(min=eps)
    boost = 1 + global_params["r"] * rho.clamp(min=0, max=global_params["alpha"])
    kept = flat * nonzero
    merged = ((kept * unique * boost.unsqueeze(-1)) + (kept * shared / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)
