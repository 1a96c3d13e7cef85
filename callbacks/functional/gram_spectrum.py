"""Spectral-edge statistics computed in Gram space, from w×w inner-product matrices only.

With X [w, P] the window of update rows, G = X Xᵀ gives σ_k and u_k (v_k = Xᵀu_k/σ_k); every
projection onto v_k then needs only inner products of rows, never a P-sized vector.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

EPS = 1e-12  # σ below this counts as zero (docs/methods.md §4.4)
SCORE_CAP = 1e6  # ratio used when the denominator σ is below EPS (docs/methods.md §4.4)


def append_gram(gram: Tensor, col: Tensor, corner: Tensor, keep: int) -> Tensor:
    """Border a symmetric Gram matrix with one new row, then keep the newest ``keep`` rows.

    gram [n, n] covers rows oldest→newest; col [m] (m ≤ n) holds the new row's inner products
    with the newest m of them; corner is its squared norm. Returns [min(m+1, keep)]².
    """
    m = col.shape[0]
    old = gram[gram.shape[0] - m :, gram.shape[0] - m :]
    top = torch.cat([old, col[:, None]], dim=1)  # [m, m+1]
    bottom = torch.cat([col, corner.reshape(1)])[None, :]  # [1, m+1]
    out = torch.cat([top, bottom], dim=0)
    return out[-keep:, -keep:]


def window_spectrum(gram: Tensor) -> tuple[Tensor, Tensor]:
    """σ [w] descending and U [w, w] (column k = u_k) of G = X Xᵀ, float64.

    Sign convention (so signed quantities are reproducible): v_k points along the window's net motion,
    i.e. Σ_j ⟨x_j, v_k⟩ = σ_k Σ_j u_jk ≥ 0 (ties broken by the newest row's component).
    """
    lam, vecs = torch.linalg.eigh(gram.to(torch.float64))  # ascending
    lam, vecs = lam.flip(0).clamp_min(0.0), vecs.flip(1)
    sums = vecs.sum(0)
    sign = torch.where(sums.abs() > EPS, sums.sign(), vecs[-1].sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return lam.sqrt(), vecs * sign


def gap_ratio(a: float, b: float) -> float:
    return a / b if b >= EPS else SCORE_CAP


def edge_statistics(sigma: Tensor) -> dict:
    """g23, k*, R and the consecutive ratios σ_k/σ_{k+1} of one window (docs/methods.md §4.4)."""
    s = [float(x) for x in sigma]
    lam = [x * x for x in s]
    g23 = lam[1] - lam[2] if len(s) > 2 else lam[1]
    ratios = [gap_ratio(s[j], s[j + 1]) for j in range(len(s) - 1)]
    total = sum(s)
    if total < EPS:
        k_star, big_r = 1, 1.0
    else:
        scores = [(s[j] / total) * ratios[j] for j in range(len(s) - 1)]
        k_star = int(np.argmax(scores)) + 1
        big_r = ratios[k_star - 1]
    return {"g23": g23, "k_star": k_star, "gap_ratio": big_r, "ratios": ratios}


def usable_modes(sigma: Tensor, top_k: int) -> int:
    """How many leading directions exist (σ_k > EPS), capped at top_k."""
    return min(top_k, int((sigma > EPS).sum()))


def mode_overlaps(u_prev: Tensor, s_prev: Tensor, cross: Tensor, u_cur: Tensor, s_cur: Tensor) -> Tensor:
    """O[i, j] = ⟨v_i(prev), v_j(cur)⟩ from cross = X_prev X_curᵀ [w_p, w_c]; u_* [w, K], s_* [K] (> EPS)."""
    return (u_prev / s_prev).T @ cross @ (u_cur / s_cur)  # [K_p, K_c]


def rotation_angles(overlaps: Tensor) -> dict:
    """Angles (degrees) between consecutive windows from O [K_p, K_c]: v₁ against the current mode it is
    matched to (Hungarian assignment on |O|, sign-invariant), and the largest principal angle between
    span(v₁, v₂) of both windows (when both have two directions).

    With fewer current modes than old ones (K_c < K_p) the old v₁ can be left without a partner: its
    angle is then unavailable (NaN)."""
    o = overlaps.abs().numpy()
    rows, cols = linear_sum_assignment(-o)
    match = dict(zip(rows.tolist(), cols.tolist()))
    v1 = math.degrees(math.acos(min(1.0, o[0, match[0]]))) if 0 in match else math.nan
    out = {"rotation_v1_deg": v1}
    if o.shape[0] >= 2 and o.shape[1] >= 2:
        cosines = torch.linalg.svdvals(overlaps[:2, :2])  # cosines of the principal angles
        out["rotation_span12_deg"] = math.degrees(math.acos(min(1.0, float(cosines.min()))))
    return out


def theta_cosines(xtheta: Tensor, u: Tensor, sigma: Tensor, theta_norm: float) -> Tensor:
    """|cos(θ, v_k)| = |(Xθ)ᵀu_k| / (σ_k ‖θ‖); xtheta [w] = X θ, u [w, K], sigma [K] (> EPS)."""
    return (xtheta @ u).abs() / (sigma * theta_norm)
