"""iso_c and iso_cts: isotropic merging, Marczak et al., "No Task Left Behind: Isotropic Model Merging with
Common and Task-Specific Subspaces", ICML 2025, arXiv 2502.04959.

Reference code: github.com/danielm1405/iso-merging, src/utils/iso.py (``iso_c``, ``iso_cts``; defaults in
config/method/iso_cts.yaml). Where the paper and the code could be read differently this module follows
the code: the sizes of the common and task-specific subspaces, the spectrum mean over all min(m, n)
values, and averaging for tensors that are not matrices.
"""

from __future__ import annotations

import torch

from ._registry import Param, method
from ._spectral import ALPHA, SVD, is_matrix, mean_task_vector, polar, task_sum


def subspace_sizes(rows: int, cols: int, n_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(c, d): the common subspace keeps c directions and each task d, with c + T·d = min(rows, cols).

    As the reference code: c₀ = ⌊r·k⌋, then the task-specific total r − c₀ is rounded (Python ``round``,
    ties to even) to a multiple of T, and c takes what is left. Where that rounding would exceed r (only
    for tiny r and small k, where the reference code breaks) the total is rounded down instead.
    """
    r = min(rows, cols)
    c0 = int(r * common_space_fraction)
    specific = round((r - c0) / n_tasks) * n_tasks
    if specific > r:
        specific = ((r - c0) // n_tasks) * n_tasks
    return r - specific, specific // n_tasks


@method(
    "iso_c",
    global_params={"alpha": ALPHA, "svd": SVD},
    base="required",
    min_models=1,
    title="No Task Left Behind: Isotropic Model Merging (Marczak et al., ICML 2025)",
    reference="https://arxiv.org/abs/2502.04959",
    finite_inputs=True,
)
def iso_c(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    """Iso-C: isotropic merging in the common subspace.

    For a 2-D tensor (m×n, r = min(m, n)) and task matrices Δᵢ = θᵢ − base:
      Δ = Σᵢ Δᵢ (the task-arithmetic sum, not the mean);  Δ = U S Vᵀ (thin SVD);
      σ̄ = (1/r) Σⱼ Sⱼⱼ (the mean of all r singular values, i.e. ‖Δ‖_* / r);
      result = base + alpha · σ̄ · U Vᵀ  (S replaced by σ̄·I: a flat, isotropic spectrum).
    Every other tensor (not 2-D, or ``svd: false``) gets base + alpha · (1/T) Σᵢ Δᵢ, as in the reference
    code (mean task vector, scaled with the rest of the merged task vector).
    """
    alpha = global_params["alpha"]
    if not is_matrix(base, global_params):
        return base + alpha * mean_task_vector(tensors, base)
    total = task_sum(tensors, base)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    return base + (alpha * s.mean()) * (u @ vh)


@method(
    "iso_cts",
    global_params={
        "alpha": ALPHA,
        "common_space_fraction": Param(
            float, 0.8, low=0.0, high=1.0, help="fraction k of min(rows, columns) given to the common subspace"
        ),
        "svd": SVD,
    },
    base="required",
    min_models=1,
    title="No Task Left Behind: Isotropic Model Merging (Marczak et al., ICML 2025)",
    reference="https://arxiv.org/abs/2502.04959",
    finite_inputs=True,
)
def iso_cts(tensors, base, params, global_params, generator=None) -> torch.Tensor:
    """Iso-CTS: isotropic merging in common and task-specific subspaces.

    For a 2-D tensor (m×n, r = min(m, n)), T task matrices Δᵢ = θᵢ − base and k = common_space_fraction:
      1. Sizes (see ``subspace_sizes``): c₀ = ⌊r·k⌋, t = round((r − c₀)/T)·T, c = r − t, d = t/T.
      2. Common subspace: Δ = Σᵢ Δᵢ = U S Vᵀ; keep U_c = U[:, :c], S_c, V_cᵀ = Vᵀ[:c].
      3. Task-specific: Rᵢ = Δᵢ − U_c U_cᵀ Δᵢ (Δᵢ with its component in the common column space removed);
         Rᵢ = Uᵢ Sᵢ Vᵢᵀ; keep the top d triplets of each task.
      4. Stack U_all = [U₁,d … U_T,d U_c] (m×r), s_all (r), V_allᵀ (r×n); orthogonalise both factors by
         their polar factor (SVD whitening: A = P Σ Qᵀ → P Qᵀ), as TSV-M does.
      5. σ̄ = mean(s_all);  result = base + alpha · σ̄ · U_all⊥ V_all⊥ᵀ.
    With k = 1 there are no task-specific directions (c = r, d = 0) and the result equals iso_c's.
    Every other tensor (not 2-D, or ``svd: false``) gets base + alpha · (1/T) Σᵢ Δᵢ, as in the reference code.
    """
    alpha = global_params["alpha"]
    if not is_matrix(base, global_params):
        return base + alpha * mean_task_vector(tensors, base)
    deltas = [t - base for t in tensors]
    total = sum(deltas, torch.zeros_like(base))
    c, d_per_task = subspace_sizes(*base.shape, len(deltas), global_params["common_space_fraction"])
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    u_c, s_c, vh_c = u[:, :c], s[:c], vh[:c, :]
    us, ss, vhs = [], [], []
    if d_per_task > 0:
        for delta in deltas:
            residual = delta - u_c @ (u_c.T @ delta)
            ui, si, vhi = torch.linalg.svd(residual, full_matrices=False)
            us.append(ui[:, :d_per_task])
            ss.append(si[:d_per_task])
            vhs.append(vhi[:d_per_task, :])
    u_all = torch.cat(us + [u_c], dim=1)
    s_all = torch.cat(ss + [s_c])
    vh_all = torch.cat(vhs + [vh_c], dim=0)
    return base + (alpha * s_all.mean()) * (polar(u_all) @ polar(vh_all))
