"""tsv_merge: Task Singular Vectors merging (TSV-M), Gargiulo et al., CVPR 2025, arXiv 2412.00081.

Reference code: github.com/AntoAndGar/task_singular_vectors, src/utils/TSVM_utils.py,
``compute_and_sum_svd_mem_reduction`` (the "TSVM" method); the same function is used by the Iso-C/CTS
authors (github.com/danielm1405/iso-merging). Where the paper and that code could be read differently,
this module follows the code.
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from ._registry import Param, method
from ._spectral import ALPHA, SVD, is_matrix, mean_task_vector, polar

def tsv_components(
    deltas: list[torch.Tensor], rank_fraction: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TSV-M on task matrices Δᵢ (m×n): (U⊥ [m×Tk], s [Tk], V⊥ᵀ [Tk×n]) with Δ_merged = U⊥·diag(s)·V⊥ᵀ.

    k = ⌊min(m, n) · rank_fraction⌋ (Python ``int`` of the float product, as the reference code).
    """
    m, n = deltas[0].shape
    k = int(min(m, n) * rank_fraction)
    us, ss, vhs = [], [], []
    for d in deltas:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k, :])
    u_cat = torch.cat(us, dim=1)
    s_cat = torch.cat(ss)
    vh_cat = torch.cat(vhs, dim=0)
    if k == 0:
        return u_cat, s_cat, vh_cat
    return polar(u_cat), s_cat, polar(vh_cat)


def _check(params: list[dict], global_params: dict) -> None:
    f = global_params["rank_fraction"]
    if f is not None and params and f * len(params) > 1 + 1e-9:
        raise RecipeError(
            f"tsv_merge: parameter `rank_fraction` ({f:g}) times the number of models ({len(params)}) must not "
            "exceed 1 (the concatenated singular vectors must fit in min(rows, columns))"
        )


@method(
    "tsv_merge",
    global_params={
        "alpha": ALPHA,
        "rank_fraction": Param(
            float,
            None,
            low=0.0,
            high=1.0,
            low_open=True,
            nullable=True,
            help="fraction of min(rows, columns) kept per task; null means 1/T for T models (the paper's choice)",
        ),
        "svd": SVD,
    },
    base="required",
    min_models=1,
    check=_check,
    title="Task Singular Vectors: Reducing Task Interference in Model Merging (Gargiulo et al., CVPR 2025)",
    reference="https://arxiv.org/abs/2412.00081",
    finite_inputs=True,
)
def tsv_merge(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    """TSV-Merge (TSV-M).

    For a 2-D tensor (m×n, r = min(m, n)) and T models with task matrices Δᵢ = θᵢ − base:
      1. Δᵢ = Uᵢ Σᵢ Vᵢᵀ (thin SVD); keep the top k = ⌊r · f⌋ triplets, f = rank_fraction (default 1/T).
      2. Concatenate: U = [U₁,ₖ … U_T,ₖ] (m×Tk), s = [σ₁,ₖ … σ_T,ₖ] (Tk), Vᵀ = [V₁,ₖᵀ; …; V_T,ₖᵀ] (Tk×n).
      3. Decorrelate by SVD whitening (the orthogonal Procrustes / polar factor): U = P Σ_U Qᵀ gives
         U⊥ = P Qᵀ; likewise Vᵀ = P' Σ_V Q'ᵀ gives V⊥ᵀ = P' Q'ᵀ. U⊥ (and V⊥) have orthonormal columns.
      4. Δ_merged = U⊥ · diag(s) · V⊥ᵀ;  result = base + alpha · Δ_merged.
    With T = 1 and f = 1 the factors are already orthonormal and the result is base + alpha·Δ₁.
    If k = 0 (T > r with the default f) no triplet is kept and the result is the base, as in the
    reference code, whose merged matrix is then all zeros.

    Every other tensor (1-D biases and norms, 0-D, 3-D and 4-D tensors such as conv kernels, and 2-D
    tensors given ``svd: false``) gets base + alpha · (1/T) Σᵢ Δᵢ: the reference code averages the task
    vectors of those tensors and scales the whole merged task vector by alpha when applying it.
    """
    alpha = global_params["alpha"]
    if not is_matrix(base, global_params):
        return base + alpha * mean_task_vector(tensors, base)
    f = global_params["rank_fraction"]
    if f is None:
        f = 1 / len(tensors)
    u, s, vh = tsv_components([t - base for t in tensors], f)
    if s.numel() == 0:
        return base.clone()
    return base + alpha * ((u * s) @ vh)
