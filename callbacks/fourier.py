"""Fourier summaries (spec §10.1, §10.4): the positional DFT of hidden states and the DFT of a per-token
response grouped by a target value (the "depth basis").

Pure functions on tensors. The positional DFT centres each feature over valid positions by default and
reports the DC bin apart; ``centre=False`` with ``include_dc=True`` is the reference's variant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def positional_power(reps: Tensor, mask: Tensor, centre: bool = True) -> Tensor:
    """Power per frequency of reps [N, T, D] along T, averaged over (n, d) -> [T // 2 + 1] float64.

    Masked positions (mask [N, T] False) are zero; with ``centre`` the per-feature mean over all valid
    (n, t) is subtracted first.
    """
    m = mask.to(torch.float64)[..., None]  # [N, T, 1]
    x = reps.to(torch.float64)
    if centre:
        mean = (x * m).sum((0, 1)) / m.sum((0, 1)).clamp(min=1.0)  # [D]
        x = x - mean
    spectrum = torch.fft.rfft(x * m, dim=1)  # [N, T//2+1, D]
    return spectrum.abs().square().mean(dim=(0, 2))


@dataclass
class SpectrumSummary:
    """Concentration of a power spectrum: shares of its largest bins, and where its peak is."""

    dc_share: float  # P[0] / Σ P
    top1: float  # share of the largest bin among the counted bins
    top3: float
    top5: float
    omega_star: int  # the counted bin of largest power


def summarize_spectrum(power: Tensor, include_dc: bool = False) -> SpectrumSummary:
    """Summaries of power [K]; without ``include_dc`` the top-k shares and ω* count only bins 1..K-1."""
    counted = power if include_dc else power[1:]
    offset = 0 if include_dc else 1
    ordered = counted.sort(descending=True).values
    share = lambda k: float(ordered[:k].sum() / counted.sum())  # noqa: E731
    return SpectrumSummary(
        dc_share=float(power[0] / power.sum()),
        top1=share(1),
        top3=share(3),
        top5=share(5),
        omega_star=int(counted.argmax()) + offset,
    )


@dataclass
class GroupedSpectrum:
    """DFT of a response averaged per target level (§10.4), against the uniform baseline 1/n_bins."""

    levels: list[float]  # the target values present, ascending
    power: Tensor  # [n_bins] float64
    concentration: float  # F = max power / total power (the ≈0 DC bin stays in the total)
    omega_star: int
    n_bins: int

    @property
    def baseline(self) -> float:
        return 1.0 / self.n_bins

    @property
    def elevation(self) -> float:
        """F / baseline = F · n_bins."""
        return self.concentration * self.n_bins


def grouped_spectrum(response: Tensor, levels: Tensor) -> GroupedSpectrum:
    """response [n] per token, levels [n] its target value: s[d] = mean response at level d over the levels
    present, centred, then rfft -> power [len(levels)//2 + 1]."""
    present, inverse = torch.unique(levels, sorted=True, return_inverse=True)
    if len(present) < 2:
        raise ValueError(f"a grouped spectrum needs at least 2 distinct target values, got {len(present)}")
    r = response.to(torch.float64)
    sums = torch.zeros(len(present), dtype=torch.float64, device=r.device).index_add_(0, inverse, r)
    counts = torch.bincount(inverse, minlength=len(present)).to(torch.float64)
    s = sums / counts  # [G]
    power = torch.fft.rfft(s - s.mean()).abs().square()  # [G//2+1]
    return GroupedSpectrum(
        levels=[float(v) for v in present],
        power=power,
        concentration=float(power.max() / power.sum()),
        omega_star=int(power.argmax()),
        n_bins=len(power),
    )
