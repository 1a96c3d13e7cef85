"""Pure math of the gradient / weight-decay split of each edge direction (``EdgeDecomposer``), in Gram space.

Each row's projection on v_k splits exactly into g_j (optimizer-processed gradient) + w_j (decay); with
C = X_wd Xᵀ kept beside G = X Xᵀ, every quantity needs only w×w inner products.
"""
from __future__ import annotations

import torch
from torch import Tensor


def append_cross(cross: Tensor, new_row: Tensor, new_col: Tensor, corner: Tensor, keep: int) -> Tensor:
    """Same for C[i, j] = a_i · b_j (two row families sharing the window): new_row [m] = a_new · b_old,
    new_col [m] = a_old · b_new, corner = a_new · b_new."""
    m = new_row.shape[0]
    old = cross[cross.shape[0] - m :, cross.shape[1] - m :]
    top = torch.cat([old, new_col[:, None]], dim=1)
    bottom = torch.cat([new_row, corner.reshape(1)])[None, :]
    out = torch.cat([top, bottom], dim=0)
    return out[-keep:, -keep:]


def decompose(cross_wd: Tensor, u_k: Tensor, sigma_k: float) -> dict:
    """Split each row's projection on v_k into gradient and decay parts (docs/methods.md §5.2).

    cross_wd [w, w] = X_wd Xᵀ; u_k [w]. t_j = σ_k u_jk, w_j = (X_wd Xᵀ u_k)_j / σ_k, g_j = t_j − w_j.
    """
    t = sigma_k * u_k
    w = (cross_wd @ u_k) / sigma_k
    g = t - w
    e_grad, e_wd = float((g * g).mean()), float((w * w).mean())
    denom = e_grad + e_wd
    return {
        "grad_frac": e_grad / denom if denom > 0 else 0.5,
        "alignment": float((g * w).mean()),
        "grad_mean": float(g.mean()),
        "wd_mean": float(w.mean()),
        "e_grad": e_grad,
        "e_wd": e_wd,
    }
