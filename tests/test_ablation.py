"""Ablation math against numpy, interval coverage by simulation, and AblationCallback end to end."""
import math

import numpy as np
import pytest
import torch

from callbacks.ablation import (
    PairedCounts,
    norm_matched_removal,
    paired_counts,
    paired_interval,
    projection_removal,
    radial_removal,
    random_subspace,
    ratio_interval,
    resolvable,
)

P = 300


def orthonormal_rows(m, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((P, m)))
    return q.T


def test_projection_removal_equals_explicit_projector():
    rng = np.random.default_rng(1)
    theta = rng.standard_normal(P)
    V = orthonormal_rows(3, 2)  # [3, P]
    projector = sum(np.outer(v, v) for v in V)  # [P, P]
    expected = theta - projector @ theta
    got = torch.from_numpy(theta) - projection_removal(torch.from_numpy(theta), torch.from_numpy(V))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    # the ablated vector has no component left in the subspace and is a projection (idempotent)
    np.testing.assert_allclose(V @ got.numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(projector @ (projector @ theta), projector @ theta, atol=1e-12)


def test_random_subspace_is_orthonormal_seeded_and_uses_default_rng():
    a, b, c = random_subspace(2, P, 7), random_subspace(2, P, 7), random_subspace(2, P, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    np.testing.assert_allclose((a @ a.T).numpy(), np.eye(2), atol=1e-12)
    gauss = np.random.default_rng(7).standard_normal((P, 2))  # span must be that of the seeded Gaussian
    residual = gauss - a.numpy().T @ (a.numpy() @ gauss)
    np.testing.assert_allclose(residual, 0, atol=1e-10)


def test_controls_remove_the_norm_they_claim():
    rng = np.random.default_rng(3)
    theta = rng.standard_normal(P)
    t = torch.from_numpy(theta)
    edge = orthonormal_rows(2, 4)
    c = float(np.linalg.norm(edge.T @ (edge @ theta)))
    R = random_subspace(2, P, 11)
    matched = t - norm_matched_removal(t, R, c)
    radial = t - radial_removal(t, c)
    assert np.linalg.norm(theta - matched.numpy()) == pytest.approx(c, rel=1e-12)
    assert np.linalg.norm(theta - radial.numpy()) == pytest.approx(c, rel=1e-12)
    # the norm-matched removal stays inside the random subspace, along θ's component there
    Rn = R.numpy()
    removed = theta - matched.numpy()
    np.testing.assert_allclose(Rn.T @ (Rn @ removed), removed, atol=1e-12)
    assert removed @ (Rn.T @ (Rn @ theta)) > 0
    # the radial shrink keeps the direction: θ' = θ(1 − c/‖θ‖)
    np.testing.assert_allclose(radial.numpy(), theta * (1 - c / np.linalg.norm(theta)), atol=1e-12)
    # removing θ̂ zeroes θ (control d): the projection onto span{θ̂}
    hat = t / t.norm()
    np.testing.assert_allclose((t - projection_removal(t, hat[None])).numpy(), 0, atol=1e-12)


def test_paired_counts_and_delta():
    base = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    changed = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool)
    counts = paired_counts(base, changed)
    assert (counts.lost, counts.gained, counts.n) == (2, 1, 6)
    assert counts.delta == pytest.approx(changed.float().mean() - base.float().mean())
    with pytest.raises(ValueError, match="equal shapes"):
        paired_counts(base, changed[:3])


def test_paired_interval_formula_and_coverage():
    # Agresti–Min: add 1/2 per cell, Wald on the paired difference
    lo, hi = paired_interval(PairedCounts(lost=30, gained=10, n=1000), 0.95)
    centre, sd = (10 - 30) / 1002, math.sqrt(41 - 400 / 1002) / 1002
    assert lo == pytest.approx(centre - 1.959964 * sd, rel=1e-6) and hi == pytest.approx(centre + 1.959964 * sd, rel=1e-6)
    lo0, hi0 = paired_interval(PairedCounts(0, 0, 4000), 0.95)
    assert lo0 < 0 < hi0  # no change observed: the interval still has width and contains 0
    # coverage by simulation: multinomial 2×2 tables with known difference
    rng = np.random.default_rng(0)
    cells = np.array([0.6, 0.08, 0.03, 0.29])  # both right, lost, gained, both wrong
    truth = cells[2] - cells[1]
    tables = rng.multinomial(400, cells, size=4000)
    hits = 0
    for _, lost, gained, _ in tables:
        lo, hi = paired_interval(PairedCounts(int(lost), int(gained), 400), 0.95)
        hits += lo <= truth <= hi
    assert 0.935 < hits / len(tables) < 0.965


def test_resolvable_and_ratio():
    assert not resolvable(0.0, (-1e-3, 1e-3), 4000)  # contains 0
    assert not resolvable(1e-4, (5e-5, 2e-4), 4000)  # below one trial (1/4000)
    assert resolvable(-0.01, (-0.02, -0.005), 4000)
    bad = ratio_interval(-0.4, (-0.42, -0.38), 0.0, (-1e-3, 1e-3), 4000)
    assert bad["status"] == "not_resolvable" and math.isnan(bad["ratio"])
    ok = ratio_interval(-0.4, (-0.42, -0.38), -0.2, (-0.25, -0.1), 4000)
    assert ok["status"] == "ok" and ok["ratio"] == pytest.approx(2.0)
    assert ok["interval"] == pytest.approx([0.38 / 0.25, 0.42 / 0.1])
