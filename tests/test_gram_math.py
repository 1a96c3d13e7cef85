"""Gram-space formulas of callbacks/functional/ (gram_spectrum.py, edge_decomposer.py) against dense numpy/scipy on explicit matrices."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from callbacks.functional.edge_decomposer import append_cross
from callbacks.functional.gram_spectrum import (
    SCORE_CAP,
    append_gram,
    edge_statistics,
    mode_overlaps,
    rotation_angles,
    theta_cosines,
    window_spectrum,
)


def _rows(w, p=50, seed=0):
    return torch.randn(w, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_window_spectrum_matches_svd_with_net_motion_sign():
    x = _rows(5)
    sigma, u = window_spectrum(x @ x.T)
    _, s, vt = np.linalg.svd(x.numpy(), full_matrices=False)
    np.testing.assert_allclose(sigma.numpy(), s, rtol=1e-12)
    v = (u / sigma).T @ x  # v_k = Xᵀ u_k / σ_k
    np.testing.assert_allclose(np.abs(v.numpy() @ vt.T), np.eye(5), atol=1e-10)
    assert bool(((x @ v.T).sum(0) > 0).all())


def test_append_gram_and_cross_equal_recomputation():
    x, d = _rows(7, seed=1), _rows(7, seed=2)
    gram, cross = torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, 0, dtype=torch.float64)
    ext = torch.zeros(0, 0, dtype=torch.float64)
    for r in range(7):
        old = slice(max(0, r - 3), r)  # the ring keeps the 3 previous rows
        gram = append_gram(gram, x[old] @ x[r], x[r] @ x[r], keep=3)
        ext = append_gram(ext, x[old] @ x[r], x[r] @ x[r], keep=4)
        cross = append_cross(cross, new_row=x[old] @ d[r], new_col=d[old] @ x[r], corner=d[r] @ x[r], keep=3)
        win, win_ext = slice(max(0, r - 2), r + 1), slice(max(0, r - 3), r + 1)
        torch.testing.assert_close(gram, x[win] @ x[win].T, rtol=0, atol=1e-12)
        torch.testing.assert_close(ext, x[win_ext] @ x[win_ext].T, rtol=0, atol=1e-12)
        torch.testing.assert_close(cross, d[win] @ x[win].T, rtol=0, atol=1e-12)


def test_edge_statistics_formulas_and_guards():
    s = torch.tensor([4.0, 2.0, 1.5, 0.5], dtype=torch.float64)
    stats = edge_statistics(s)
    scores = [(4 / 8) * 2, (2 / 8) * (2 / 1.5), (1.5 / 8) * 3]
    assert stats["k_star"] == 1 + int(np.argmax(scores)) == 1
    assert stats["gap_ratio"] == 2.0 and stats["g23"] == 4.0 - 2.25
    assert stats["ratios"] == [2.0, 2 / 1.5, 3.0]
    two = edge_statistics(torch.tensor([3.0, 1e-13], dtype=torch.float64))  # w = 2: g23 = λ₂; σ₂ < 1e-12
    assert two["g23"] == pytest.approx(1e-26) and two["gap_ratio"] == SCORE_CAP and two["k_star"] == 1
    late = edge_statistics(torch.tensor([1.0, 0.9, 0.0], dtype=torch.float64))
    assert late["k_star"] == 2 and late["gap_ratio"] == SCORE_CAP  # (0.9/1.9)·10⁶ beats (1/1.9)·1.11
    zero = edge_statistics(torch.zeros(3, dtype=torch.float64))
    assert (zero["k_star"], zero["gap_ratio"]) == (1, 1.0)


def test_rotation_matches_modes_by_overlap_not_index():
    """v₁ and v₂ swap order between windows (σ 5 vs 4.9): index matching would report 90°,
    matching by overlap reports the true 3° tilt of the old v₁."""
    b = torch.linalg.qr(_rows(4, p=30, seed=5).T)[0].T  # orthonormal rows b1..b4
    a = math.radians(3.0)
    b1_tilted = math.cos(a) * b[0] + math.sin(a) * b[3]
    x_prev = torch.diag(torch.tensor([5.0, 4.9, 1.0], dtype=torch.float64)) @ b[:3]  # v = b1, b2, b3
    x_cur = torch.diag(torch.tensor([5.0, 4.9, 1.0], dtype=torch.float64)) @ torch.stack([b[1], b1_tilted, b[2]])
    s_p, u_p = window_spectrum(x_prev @ x_prev.T)
    s_c, u_c = window_spectrum(x_cur @ x_cur.T)
    o = mode_overlaps(u_p, s_p, x_prev @ x_cur.T, u_c, s_c)
    v_p, v_c = (u_p / s_p).T @ x_prev, (u_c / s_c).T @ x_cur
    torch.testing.assert_close(o, v_p @ v_c.T, rtol=0, atol=1e-12)
    angles = rotation_angles(o)
    assert angles["rotation_v1_deg"] == pytest.approx(3.0, rel=1e-8)
    want_span = math.degrees(scipy.linalg.subspace_angles(v_p[:2].numpy().T, v_c[:2].numpy().T).max())
    assert angles["rotation_span12_deg"] == pytest.approx(want_span, rel=1e-8)
    assert want_span == pytest.approx(3.0, rel=1e-8)  # span(b1, b2) barely moved
    assert rotation_angles(o[:1, :1])["rotation_v1_deg"] == pytest.approx(90.0)  # v₁ vs v₁ by index
    assert "rotation_span12_deg" not in rotation_angles(o[:1, :])


def test_theta_cosines():
    x, theta = _rows(4, seed=3), _rows(1, seed=4)[0]
    sigma, u = window_spectrum(x @ x.T)
    v = (u / sigma).T @ x
    got = theta_cosines(x @ theta, u, sigma, float(theta.norm()))
    torch.testing.assert_close(got, (v @ theta).abs() / theta.norm(), rtol=1e-10, atol=0)


def test_rotation_v1_without_a_partner_is_nan():
    """Rows (5b₁, 0, 2b₂) then (0, 2b₂, 0): the current window's only mode b₂ is the old v₂'s partner,
    so the old v₁ has none — NaN, never a KeyError; with two modes it is matched again."""
    b = torch.linalg.qr(_rows(3, p=20, seed=6).T)[0].T
    zero = torch.zeros_like(b[0])
    x_prev, x_cur = torch.stack([5 * b[0], zero, 2 * b[1]]), torch.stack([zero, 2 * b[1], zero])
    s_p, u_p = window_spectrum(x_prev @ x_prev.T)
    s_c, u_c = window_spectrum(x_cur @ x_cur.T)
    o = mode_overlaps(u_p[:, :2], s_p[:2], x_prev @ x_cur.T, u_c[:, :1], s_c[:1])  # usable modes: 2 then 1
    torch.testing.assert_close(o.abs(), torch.tensor([[0.0], [1.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    angles = rotation_angles(o)
    assert math.isnan(angles["rotation_v1_deg"]) and "rotation_span12_deg" not in angles
    assert math.isnan(rotation_angles(torch.zeros(2, 0, dtype=torch.float64))["rotation_v1_deg"])
    back = rotation_angles(torch.tensor([[0.2, -0.9], [0.8, 0.1]], dtype=torch.float64))
    assert back["rotation_v1_deg"] == pytest.approx(math.degrees(math.acos(0.9)), rel=1e-12)
