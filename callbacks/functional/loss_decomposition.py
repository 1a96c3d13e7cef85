"""Loss decomposition along the Gram directions: stability α_j, gradient projections G_j and their predicted
importance α_j·G_j^train·G_j^val against the measured Δloss of ablating v_j alone (docs/methods.md §11.2).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import Tensor

from .gram_spectrum import EPS, window_spectrum

MIN_ROWS = 4  # two halves of ≥ 2 rows each
FEW_POINTS = 10  # fewer directions than this: the correlations are descriptive only


def _half_directions(x: Tensor) -> tuple[Tensor, Tensor]:
    """σ [n] and U [n, n] of one half X [n, P] (float64 Gram space; v_k = Xᵀu_k/σ_k)."""
    return window_spectrum(x @ x.T)


def stability_alphas(x: Tensor, n_dirs: int, reference: bool = False) -> Tensor:
    """α_j = |⟨v_j⁽¹⁾, v_j⁽²⁾⟩|, j = 1..n_dirs, from the SVDs of the first ⌊w/2⌋ rows and the rest of X [w, P].

    NaN where a half has no v_j (j > its rank, or σ_j ≤ 10⁻¹²), and for every j when w < 4; ``reference`` sets
    them all to 1 when w < 4, as the reference does. -> [n_dirs] float64
    """
    if x.ndim != 2 or n_dirs < 1:
        raise ValueError(f"x must be [w, P] and n_dirs >= 1, got {tuple(x.shape)} and {n_dirs}")
    w = x.shape[0]
    out = torch.full((n_dirs,), math.nan, dtype=torch.float64)
    if w < MIN_ROWS:
        return torch.ones(n_dirs, dtype=torch.float64) if reference else out
    x = x.to(torch.float64)
    first, second = x[: w // 2], x[w // 2 :]
    s1, u1 = _half_directions(first)
    s2, u2 = _half_directions(second)
    cross = first @ second.T  # X₁ X₂ᵀ [n₁, n₂]
    for j in range(min(n_dirs, len(s1), len(s2))):
        if s1[j] > EPS and s2[j] > EPS:
            out[j] = float((u1[:, j] @ cross @ u2[:, j]).abs() / (s1[j] * s2[j]))
    return out


def gradient_projections(grad: Tensor, directions: Tensor) -> Tensor:
    """G_j = ⟨v_j, ∇L⟩ for grad [P] and unit rows v_j of directions [K, P]. -> [K] float64"""
    return directions.to(torch.float64) @ grad.to(torch.float64)


def _correlation(fn, a: np.ndarray, b: np.ndarray) -> float:
    """fn(a, b)'s statistic, NaN with fewer than 3 points or a constant input."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(fn(a, b)[0])


def importance(alpha: Tensor, g_train: Tensor, g_val: Tensor, actual_dloss: Tensor) -> dict:
    """predicted_j = α_j·G_j^train·G_j^val; Pearson and Spearman of |predicted| against |actual Δloss| over the
    directions where both are finite (NaN below 3), with ``few_points`` when there are fewer than 10. All [K]."""
    predicted = alpha.double() * g_train.double() * g_val.double()  # [K]
    p, a = predicted.abs().numpy(), actual_dloss.double().abs().numpy()
    ok = np.isfinite(p) & np.isfinite(a)
    n = int(ok.sum())
    return {
        "predicted": predicted.tolist(),
        "pearson": _correlation(pearsonr, p[ok], a[ok]),
        "spearman": _correlation(spearmanr, p[ok], a[ok]),
        "n_points": n,
        "few_points": n < FEW_POINTS,
    }
