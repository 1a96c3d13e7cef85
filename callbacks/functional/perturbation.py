"""Pure math of the perturbation tests (docs/methods.md §6): ε grids, KL between predictive distributions, curvature.

Curvature vᵀHv is exact (double backward through the evaluation loss); the docs/methods.md §6.2 finite difference
[L(θ+εv) + L(θ−εv) − 2L(θ)]/ε² is kept beside it so the reference's estimate can be checked.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..utils.protocols import EvaluableModule


def kl_divergence(log_p: Tensor, log_q: Tensor, counts: Tensor | None = None) -> float:
    """Mean over rows of KL(p‖q) = Σ_c p_c (log p_c − log q_c), from exact log-probabilities [N, C]; ``counts`` [N]:
    how many rows each stands for (None: one each)."""
    log_p, log_q = log_p.double(), log_q.double()
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [N]
    return float(kl.mean() if counts is None else (kl * counts).sum() / counts.sum())


def qk_commutator(in_proj_weight: Tensor) -> float:
    """‖W_Q W_K − W_K W_Q‖_F of the d×d query and key blocks (the first two d-row blocks) of an attention
    in-projection [3d, d] (docs/methods.md §6.1)."""
    d = in_proj_weight.shape[1]
    q, k = in_proj_weight[:d].double(), in_proj_weight[d : 2 * d].double()  # [d, d] each
    return float(torch.linalg.matrix_norm(q @ k - k @ q))


def second_difference(loss_plus: float, loss_minus: float, loss_zero: float, eps: float) -> float:
    """Central finite-difference estimate of d²L/dε² along a unit direction (docs/methods.md §6.2)."""
    return (loss_plus + loss_minus - 2.0 * loss_zero) / eps**2


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


def exact_curvatures(module: EvaluableModule, batches: list[Any], params: Sequence[Tensor],
                     pieces: list[list[Tensor]], n_tokens: int, row_counts: list[Tensor] | None = None) -> list[float]:
    """vᵀHv of the token-mean evaluation loss for each direction v (pieces shaped like ``params``), summed batch by
    batch; ``row_counts`` (per batch [B] int64): how many rows each row stands for (None: one each).

    Uses the math attention kernel: the fused CPU/GPU kernels have no double backward.
    """
    total = np.zeros(len(pieces))
    with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        for i, batch in enumerate(batches):
            logits, targets, seq = module.labelled_logits(batch)  # [N, C], [N], [N]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            if row_counts is None:
                loss = F.cross_entropy(logits, targets, reduction="sum") / n_tokens
            else:
                counts = row_counts[i].to(seq.device)[seq].to(logits.dtype)  # [N]
                loss = (F.cross_entropy(logits, targets, reduction="none") * counts).sum() / n_tokens
            total += hessian_quadratic_forms(loss, params, pieces)
    return total.tolist()
