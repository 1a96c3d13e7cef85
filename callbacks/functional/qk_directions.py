"""Pure math of the W_Q / W_K singular directions of an attention layer and their overlap with an update direction
(docs/methods.md §10.4).

Matrices are float64 tensors; W_Q, W_K [d, d] act on the layer's input (rows = output features, as in
``nn.MultiheadAttention.in_proj_weight`` = [W_Q; W_K; W_V]).
"""
from __future__ import annotations

import torch
from torch import Tensor


def query_key(in_proj_weight: Tensor) -> tuple[Tensor, Tensor]:
    """(W_Q, W_K) [d, d] each: the first two d-row blocks of in_proj_weight [3d, d]."""
    rows, d = in_proj_weight.shape
    if rows != 3 * d:
        raise ValueError(f"in_proj_weight must be [3d, d], got {tuple(in_proj_weight.shape)}")
    return in_proj_weight[:d], in_proj_weight[d : 2 * d]


def head_forms(w_q: Tensor, w_k: Tensor, heads: int) -> Tensor:
    """W_{Q,h}ᵀ W_{K,h} [H, d, d]: the bilinear form x ↦ y of each head's attention logits (before 1/√d_h)."""
    d = w_q.shape[0]
    if d % heads:
        raise ValueError(f"{heads} heads do not divide the embedding size {d}")
    q, k = w_q.reshape(heads, d // heads, -1), w_k.reshape(heads, d // heads, -1)  # [H, d_h, d]
    return q.transpose(1, 2) @ k


def top_singular(matrix: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """(U [m, r'], S [r'], Vᵀ [r', n]) of the r' = min(r, m, n) largest singular values of matrix [m, n]; each
    pair's sign fixed so that the largest-magnitude entry of u_i is positive."""
    u, s, vt = torch.linalg.svd(matrix, full_matrices=False)
    r = min(r, s.numel())
    u, s, vt = u[:, :r], s[:r], vt[:r]
    flip = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))[0]  # [r]
    flip[flip == 0] = 1
    return u * flip, s, vt * flip[:, None]


def direction_overlaps(block: Tensor, u: Tensor, vt: Tensor) -> dict:
    """How a direction's block B [m, n] (an update direction restricted to this matrix, reshaped) sits on the
    singular pairs (u_i, v_i) of the matrix: ``block_norm`` ‖B‖_F; ``overlaps`` [r] |u_iᵀ B v_i| / ‖B‖_F =
    |⟨B̂, u_i v_iᵀ⟩_F|; ``subspace_share`` ‖U_rᵀ B V_r‖²/‖B‖² (inside both top-r spaces), ``left_share``
    ‖U_rᵀ B‖²/‖B‖² (output side), ``right_share`` ‖B V_r‖²/‖B‖² (input side). NaN shares when B = 0."""
    norm = float(block.norm())
    if norm == 0.0:
        nan = float("nan")
        return {"block_norm": 0.0, "overlaps": [nan] * u.shape[1], "subspace_share": nan, "left_share": nan,
                "right_share": nan}
    inner = u.T @ block @ vt.T  # [r, r]: u_iᵀ B v_j
    return {
        "block_norm": norm,
        "overlaps": [float(x) for x in inner.diagonal().abs() / norm],
        "subspace_share": float(inner.square().sum()) / norm**2,
        "left_share": float((u.T @ block).square().sum()) / norm**2,
        "right_share": float((block @ vt.T).square().sum()) / norm**2,
    }
