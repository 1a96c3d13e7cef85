"""Pure math of the perturbation tests (spec §6): ε grids, KL between predictive distributions, curvature.

Curvature vᵀHv is exact (double backward through the evaluation loss); the §6.2 finite difference
[L(θ+εv) + L(θ−εv) − 2L(θ)]/ε² is kept beside it so the reference's estimate can be checked.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def check_eps_grid(eps: Sequence[float]) -> list[float]:
    """The grid as floats; it must contain 0, the unperturbed reference point of every curve."""
    grid = [float(e) for e in eps]
    if 0.0 not in grid:
        raise ValueError(f"the ε grid must contain 0 (the unperturbed model), got {grid}")
    return grid


def kl_divergence(log_p: Tensor, log_q: Tensor) -> float:
    """Mean over rows of KL(p‖q) = Σ_c p_c (log p_c − log q_c), from exact log-probabilities [N, C]."""
    log_p, log_q = log_p.double(), log_q.double()
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def second_difference(loss_plus: float, loss_minus: float, loss_zero: float, eps: float) -> float:
    """Central finite-difference estimate of d²L/dε² along a unit direction (spec §6.2)."""
    return (loss_plus + loss_minus - 2.0 * loss_zero) / eps**2


def split_like(vector: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Cut a flat [P] vector into pieces shaped like ``params`` (row-major, in order), in their dtype."""
    sizes = [p.numel() for p in params]
    if vector.numel() != sum(sizes):
        raise ValueError(f"vector has {vector.numel()} entries but the parameters hold {sum(sizes)}")
    return [piece.view_as(p).to(p.dtype) for piece, p in zip(vector.split(sizes), params)]


def hessian_quadratic_forms(loss: Tensor, params: Sequence[Tensor], directions: Sequence[Sequence[Tensor]]) -> list[float]:
    """vᵀ(∂²loss/∂θ²)v for each direction v (pieces shaped like ``params``), by double backward.

    Only ``params`` are differentiated; other parameters are constants. Exact up to float round-off.
    """
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    forms = []
    for i, v in enumerate(directions):
        gv = sum((g * d).sum() for g, d in zip(grads, v) if g is not None)
        if not isinstance(gv, Tensor) or not gv.requires_grad:  # the gradient is constant in θ: H = 0
            forms.append(0.0)
            continue
        hv = torch.autograd.grad(gv, params, retain_graph=i + 1 < len(directions), allow_unused=True)
        forms.append(sum(float((h.double() * d.double()).sum()) for h, d in zip(hv, v) if h is not None))
    return forms
