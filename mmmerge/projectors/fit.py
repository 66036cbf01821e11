"""Closed-form affine maps between paired features: ridge least squares and orthogonal Procrustes.

Both fit y ≈ W x + b on rows of X [n, d_in] and Y [n, d_out], in float64, and report the relative
residual ||X Wᵀ + b - Y||_F / ||Y - mean(Y)||_F: 0 is a perfect fit, 1 is no better than predicting the
mean (the square root of 1 - R²).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import RecipeError, ShapeMismatchError

METHODS = ("ridge", "procrustes")


@dataclass
class LinearFit:
    weight: torch.Tensor  # [d_out, d_in], float32
    bias: torch.Tensor  # [d_out], float32
    residual: float  # relative, on the fitted pairs
    method: str
    pairs: int


def _check(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ShapeMismatchError(f"paired features must be [n, d] matrices with the same n; got {tuple(X.shape)} "
                                 f"and {tuple(Y.shape)}")
    if X.shape[0] < 2:
        raise RecipeError(f"fitting needs at least 2 pairs, got {X.shape[0]}")
    return X.double(), Y.double()


def relative_residual(X: torch.Tensor, Y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    X, Y = X.double(), Y.double()
    err = torch.linalg.norm(X @ weight.double().T + bias.double() - Y)
    spread = torch.linalg.norm(Y - Y.mean(0))
    return float(err / spread) if spread > 0 else float(err)


def ridge(X: torch.Tensor, Y: torch.Tensor, alpha: float = 1e-4, bias: bool = True) -> LinearFit:
    """argmin ||X Wᵀ + b - Y||² + λ||W||², λ = alpha · mean eigenvalue of the (centered) XᵀX."""
    X, Y = _check(X, Y)
    mx, my = (X.mean(0), Y.mean(0)) if bias else (torch.zeros(X.shape[1], dtype=X.dtype), torch.zeros(Y.shape[1], dtype=Y.dtype))
    Xc, Yc = X - mx, Y - my
    gram = Xc.T @ Xc
    lam = alpha * float(gram.diagonal().mean()) if alpha > 0 else 0.0
    gram.diagonal().add_(lam)
    try:
        Wt = torch.linalg.solve(gram, Xc.T @ Yc)
    except RuntimeError:  # singular without regularisation: the minimum-norm solution
        Wt = torch.linalg.lstsq(Xc, Yc).solution
    W = Wt.T
    b = my - W @ mx
    return LinearFit(W.float(), b.float(), relative_residual(X, Y, W, b), "ridge", X.shape[0])


def procrustes(X: torch.Tensor, Y: torch.Tensor, scale: bool = True, bias: bool = True) -> LinearFit:
    """W = s·R with R having orthonormal rows or columns (R = U Vᵀ from the SVD of Ycᵀ Xc), s the best scale.

    With equal sizes R is the rotation (or reflection) that best aligns the centered X with Y; with
    different sizes it is the closest partial isometry.
    """
    X, Y = _check(X, Y)
    mx, my = (X.mean(0), Y.mean(0)) if bias else (torch.zeros(X.shape[1], dtype=X.dtype), torch.zeros(Y.shape[1], dtype=Y.dtype))
    Xc, Yc = X - mx, Y - my
    U, S, Vh = torch.linalg.svd(Yc.T @ Xc, full_matrices=False)
    R = U @ Vh
    s = float(S.sum() / (Xc * Xc).sum()) if scale and (Xc * Xc).sum() > 0 else 1.0
    W = s * R
    b = my - W @ mx
    return LinearFit(W.float(), b.float(), relative_residual(X, Y, W, b), "procrustes", X.shape[0])


def fit_linear(X: torch.Tensor, Y: torch.Tensor, method: str = "ridge", alpha: float = 1e-4, bias: bool = True) -> LinearFit:
    if method == "ridge":
        return ridge(X, Y, alpha=alpha, bias=bias)
    if method == "procrustes":
        return procrustes(X, Y, bias=bias)
    raise RecipeError(f"fit method {method!r} is unknown; use one of {', '.join(METHODS)}")
