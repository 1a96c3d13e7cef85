"""Pure math of the ablation test (docs/methods.md §7): what each ablation removes from θ, and how sure the effect is.

θ is the flat selected parameter vector [P] in float64. Every ``*_removal`` returns the vector r that the
ablation subtracts (θ' = θ − r), so its removed norm is ‖r‖. Accuracy effects are paired differences:
the ablated and the base model are scored on the same trials (tokens or sequences).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor


def projection_removal(theta: Tensor, basis: Tensor) -> Tensor:
    """Σ_k ⟨θ, v_k⟩ v_k for orthonormal rows v_k of ``basis`` [m, P]: the docs/methods.md §7.1 ablation. -> [P]"""
    return basis.T @ (basis @ theta)


def random_subspace(dim: int, size: int, seed: int) -> Tensor:
    """Orthonormal rows [dim, size] spanning a uniformly random subspace (QR of a Gaussian, docs/methods.md §7.2), float64.

    Drawn by ``numpy.random.default_rng(seed)``; the signs are fixed by R's diagonal so Q is unique.
    """
    gauss = np.random.default_rng(seed).standard_normal((size, dim))  # [P, m]
    q, r = np.linalg.qr(gauss)
    q *= np.sign(np.diag(r))
    return torch.from_numpy(np.ascontiguousarray(q.T))


def norm_matched_removal(theta: Tensor, basis: Tensor, removed_norm: float) -> Tensor:
    """c·r̂ with r̂ = P_B θ / ‖P_B θ‖ the unit direction of θ's component inside span(basis), c = ``removed_norm``.

    This removes exactly ``removed_norm`` along a random subspace (control b), in the direction that the
    plain projection would remove; unlike an edge ablation it need not shrink ‖θ‖ (r̂ is nearly ⟂ θ).
    """
    component = projection_removal(theta, basis)
    return component * (removed_norm / component.norm())


def radial_removal(theta: Tensor, removed_norm: float) -> Tensor:
    """θ·c/‖θ‖: the shrinkage θ ← θ·(1 − c/‖θ‖) that removes norm c without choosing a direction (control c)."""
    return theta * (removed_norm / theta.norm())


@dataclass
class PairedCounts:
    """Paired outcomes of base and changed model on the same n trials."""

    lost: int  # trials right before, wrong after
    gained: int  # trials wrong before, right after
    n: int

    @property
    def delta(self) -> float:
        """Change of accuracy (changed − base)."""
        return (self.gained - self.lost) / self.n


def paired_counts(base: Tensor, changed: Tensor, counts: Tensor | None = None) -> PairedCounts:
    """Count discordant pairs from per-trial hits ``base`` [n] and ``changed`` [n] (bool); ``counts`` [n] int64:
    how many trials each entry stands for (None: one each)."""
    if base.shape != changed.shape:
        raise ValueError(f"paired outcomes need equal shapes, got {tuple(base.shape)} and {tuple(changed.shape)}")
    counts = torch.ones_like(base, dtype=torch.long) if counts is None else counts
    lost = int(((base & ~changed) * counts).sum())
    gained = int(((~base & changed) * counts).sum())
    return PairedCounts(lost, gained, int(counts.sum()))


def sequence_interval(base: Tensor, changed: Tensor, rows: Tensor, row_copies: Tensor,
                      confidence: float) -> tuple[float, float]:
    """Interval for Δacc = Σ(changed − base) / n that treats each sequence as one unit (its trials move together):
    the cluster-robust variance of a ratio estimator, m/(m − 1)·Σ_i c_i (d_i − Δ n_i)² / N², with d_i the gained −
    lost trials of sequence i, n_i its trials, c_i its copies [R], m = Σ c_i sequences, N = Σ c_i n_i.
    base, changed [K] bool per kept trial; rows [K] int64: the sequence of each (docs/methods.md §7.3)."""
    R = len(row_copies)
    d = torch.zeros(R, dtype=torch.float64).index_add_(0, rows, changed.double() - base.double())  # [R]
    n = torch.zeros(R, dtype=torch.float64).index_add_(0, rows, torch.ones_like(rows, dtype=torch.float64))  # [R]
    c = row_copies.double()
    m, total = float(c.sum()), float((c * n).sum())
    delta = float((c * d).sum()) / total
    if m < 2:
        return math.nan, math.nan
    sd = math.sqrt(m / (m - 1) * float((c * (d - delta * n) ** 2).sum())) / total
    z = norm.ppf(0.5 + confidence / 2)
    return max(delta - z * sd, -1.0), min(delta + z * sd, 1.0)


def paired_interval(counts: PairedCounts, confidence: float) -> tuple[float, float]:
    """Agresti–Min adjusted Wald interval for a difference of paired proportions (Stat. Med. 2005).

    Adds ½ to each cell of the 2×2 table: centre (g − l)/(n + 2), sd √((g + l + 1) − (g − l)²/(n + 2))/(n + 2);
    it never collapses to zero width when no trial changes, and is clipped to [−1, 1].
    """
    z = norm.ppf(0.5 + confidence / 2)
    g, l, n = counts.gained, counts.lost, counts.n
    centre = (g - l) / (n + 2)
    sd = math.sqrt((g + l + 1) - (g - l) ** 2 / (n + 2)) / (n + 2)
    return max(float(centre - z * sd), -1.0), min(float(centre + z * sd), 1.0)


def resolvable(delta: float, interval: tuple[float, float], trials: int) -> bool:
    """An effect is resolvable when its interval excludes 0 and it is at least one trial (1/n)."""
    lo, hi = interval
    return not lo <= 0.0 <= hi and abs(delta) >= 1.0 / trials


def ratio_interval(
    num: float, num_interval: tuple[float, float], den: float, den_interval: tuple[float, float], trials: int
) -> dict:
    """Ratio num/den with the range of its interval corners, or "not_resolvable" when den is not resolvable.

    With both intervals at level 1 − α/2 the corner range covers the ratio with probability ≥ 1 − α
    (Bonferroni); it is valid because a resolvable ``den_interval`` does not contain 0.
    """
    if not resolvable(den, den_interval, trials):
        return {"status": "not_resolvable", "ratio": math.nan, "interval": [math.nan, math.nan]}
    corners = [a / b for a in num_interval for b in den_interval]
    return {"status": "ok", "ratio": num / den, "interval": [min(corners), max(corners)]}
