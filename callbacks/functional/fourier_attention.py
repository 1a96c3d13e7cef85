"""Fourier and attention summaries (docs/methods.md §10): the positional DFT of hidden states and the DFT of a per-token
response grouped by a target value (the "depth basis").

Pure functions on tensors. The positional DFT centres each feature over valid positions by default and
reports the DC bin apart; ``centre=False`` with ``include_dc=True`` is the reference's variant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
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
    """DFT of a response averaged per target level (docs/methods.md §10.3), against the uniform baseline 1/n_bins."""

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


def uniform_causal_entropy(T: int) -> float:
    """Mean entropy of uniform causal attention over T queries: (1/T) Σ_{t=1}^{T} ln t = ln(T!)/T."""
    return math.lgamma(T + 1) / T


def is_causal_pattern(probs: Tensor) -> bool:
    """True when probs [B, H, T, T] put exactly zero mass above the diagonal (a causal mask)."""
    T, S = probs.shape[-2:]
    return T == S and bool((probs.triu(diagonal=1) == 0).all())


def _query_weights(probs: Tensor, query_mask: Tensor | None) -> Tensor:
    B, _, T, _ = probs.shape
    mask = torch.ones(B, T, dtype=torch.bool, device=probs.device) if query_mask is None else query_mask.bool()
    return mask.to(torch.float64)  # [B, T]


def head_entropy(probs: Tensor, query_mask: Tensor | None = None, row_counts: Tensor | None = None) -> Tensor:
    """−Σ_s p log p (0·log 0 = 0) of probs [B, H, T, S], averaged over valid queries (all if no mask) -> [H];
    ``row_counts`` [B]: each row stands for that many identical rows (None: one each)."""
    w = _query_weights(probs, query_mask)  # [B, T]
    if row_counts is not None:
        w = w * row_counts.to(w)[:, None]
    p = probs.to(torch.float64)
    ent = -torch.xlogy(p, p).sum(-1)  # [B, H, T]
    ent = torch.where(w[:, None] > 0, ent, 0.0)  # a masked query may be NaN (no key to attend to)
    return (ent * w[:, None]).sum((0, 2)) / w.sum()


def mean_pattern(probs: Tensor, query_mask: Tensor | None = None) -> Tensor:
    """Ā [H, T, S]: per query position, the mean over the sequences where that query is valid (NaN if none)."""
    w = _query_weights(probs, query_mask)  # [B, T]
    valid = w[:, None, :, None] > 0
    total = torch.where(valid, probs.to(torch.float64), 0.0).sum(0)  # [H, T, S]
    return total / w.sum(0)[None, :, None]


def kl_to_uniform(pattern: Tensor, causal: bool) -> Tensor:
    """KL(Ā[t] ‖ uniform) per head, averaged over query rows -> [H]. Causal: uniform on keys 0..t, rows
    t = 1..T-1 (row 0 is trivially 0); otherwise uniform on all S keys, every row. NaN rows are skipped."""
    H, T, S = pattern.shape
    if causal:
        support = torch.ones(T, S, dtype=torch.bool, device=pattern.device).tril()  # keys 0..t
        n_keys = torch.arange(1, T + 1, device=pattern.device, dtype=torch.float64)[:, None]  # [T, 1]
        rows = slice(1, T)
    else:
        support = torch.ones(T, S, dtype=torch.bool, device=pattern.device)
        n_keys = torch.full((T, 1), float(S), dtype=torch.float64, device=pattern.device)
        rows = slice(0, T)
    p = pattern * support
    kl = torch.xlogy(p, p * n_keys).sum(-1)  # [H, T]
    return torch.nanmean(kl[:, rows], dim=1)


def pattern_power(pattern: Tensor) -> Tensor:
    """|rfft over keys|² of each row of Ā [H, T, S], averaged over query rows -> [H, S // 2 + 1]."""
    return torch.nanmean(torch.fft.rfft(pattern, dim=-1).abs().square(), dim=1)


def local_score(pattern: Tensor) -> Tensor:
    """mean_t Ā[t, t] -> [H] (over t < min(T, S))."""
    return torch.nanmean(pattern.diagonal(dim1=-2, dim2=-1), dim=-1)


def recent_score(pattern: Tensor, span: int = 3) -> Tensor:
    """mean_t of the mass on keys t-span+1..t -> [H] (keys t-2..t by default)."""
    H, T, S = pattern.shape
    t = torch.arange(T, device=pattern.device)[:, None]
    k = torch.arange(S, device=pattern.device)[None, :]
    band = (k <= t) & (k > t - span)  # [T, S]
    return torch.nanmean((pattern * band).sum(-1), dim=-1)


ATTENTION_BLOCK_TYPES = ("W_Q", "W_K", "W_V", "W_O")


def attention_block_masks(blocks: Sequence[tuple[str, int, tuple[int, ...]]], size: int) -> dict[str, Tensor]:
    """{block type: bool mask [size]} of the coordinates of W_Q, W_K, W_V (row thirds of each ``*in_proj_weight``
    [3d, d]) and W_O (each ``*out_proj.weight``) over all layers, from (name, offset, shape) of the flat vector's
    blocks; other parameters belong to no type (docs/methods.md §10.3)."""
    masks = {kind: torch.zeros(size, dtype=torch.bool) for kind in ATTENTION_BLOCK_TYPES}
    for name, offset, shape in blocks:
        numel = math.prod(shape)
        if name.endswith("in_proj_weight"):
            third = numel // 3  # [3d, d] row-major: W_Q, W_K, W_V are consecutive thirds
            for i, kind in enumerate(ATTENTION_BLOCK_TYPES[:3]):
                masks[kind][offset + i * third : offset + (i + 1) * third] = True
        elif name.endswith("out_proj.weight"):
            masks["W_O"][offset : offset + numel] = True
    return masks


# ---- statistics of the perturbation-response field f_k (docs/methods.md §6.5) ----------------------------------
def field_pearson(field: Tensor, values: Tensor) -> float:
    """Pearson correlation of f [n] with the target values [n] over tokens (NaN if either is constant)."""
    f, v = field.to(torch.float64), values.to(torch.float64)
    fc, vc = f - f.mean(), v - v.mean()
    denom = float(fc.norm() * vc.norm())
    return float(fc @ vc) / denom if denom > 0 else math.nan


def token_ratio(field: Tensor, tokens: Tensor, pair: tuple[int, int] | None = None) -> dict:
    """mean f over tokens ``pair[0]`` / mean f over tokens ``pair[1]`` (f, tokens [n]); without ``pair``, the two
    most frequent token ids, most frequent first (ties: smaller id first). NaN if a token is absent or the
    denominator mean is 0."""
    ids, counts = torch.unique(tokens.to(torch.int64), return_counts=True)
    if pair is None:
        if len(ids) < 2:
            return {"pair": None, "ratio": math.nan}
        order = sorted(range(len(ids)), key=lambda i: (-int(counts[i]), int(ids[i])))
        pair = (int(ids[order[0]]), int(ids[order[1]]))
    f = field.to(torch.float64)
    means = []
    for token in pair:
        sel = tokens.to(torch.int64) == token
        means.append(float(f[sel].mean()) if bool(sel.any()) else math.nan)
    ratio = means[0] / means[1] if means[1] != 0 else math.nan  # NaN propagates from an absent token
    return {"pair": [int(pair[0]), int(pair[1])], "ratio": ratio}


def positional_field_spectrum(field: Tensor, mask: Tensor) -> dict:
    """The reference's positional DFT of a field f [N, T] with valid tokens mask [N, T]: s[t] = mean of f over the
    sequences valid at t (positions valid in none are dropped), rfft without centring (DC kept), power = |·|²,
    F = max / total power, ω* = argmax (DC allowed)."""
    m = mask.to(torch.float64)
    counts = m.sum(0)  # [T]
    present = counts > 0
    if int(present.sum()) < 2:
        raise ValueError(f"a positional spectrum needs at least 2 valid positions, got {int(present.sum())}")
    s = (field.to(torch.float64) * m).sum(0)[present] / counts[present]  # [T']
    power = torch.fft.rfft(s).abs().square()
    total = float(power.sum())
    return {"power": power.tolist(), "F": float(power.max()) / total if total > 0 else math.nan,
            "omega_star": int(power.argmax()), "n_positions": int(present.sum())}


def reference_func_r2(delta: Tensor, values: Tensor, seed: int = 42, train_fraction: float = 0.7) -> float:
    """The reference's "Func R²": Ridge(α = 1, intercept, raw features) from Δh [n, D] to the target [n] on a random
    token split (``numpy.random.RandomState(seed).permutation``; the first ⌊0.7 n⌋ train), R² on the rest."""
    x, y = delta.to(torch.float64).numpy(), values.to(torch.float64).numpy()
    order = np.random.RandomState(seed).permutation(len(y))
    n_train = int(train_fraction * len(y))
    if n_train < 2 or len(y) - n_train < 2:
        raise ValueError(f"a token split needs at least 2 tokens on each side, got {len(y)} tokens")
    train, test = order[:n_train], order[n_train:]
    model = Ridge(alpha=1.0).fit(x[train], y[train])
    return float(r2_score(y[test], model.predict(x[test])))


def token_axis_power(weight: Tensor) -> Tensor:
    """Power of an embedding weight [n, D] per frequency along its token axis, summed over features ->
    [n // 2 + 1] float64 (docs/methods.md §10.5).

    Each feature is centred over the n tokens first, so bin 0 is 0 and ``summarize_spectrum`` gives the share
    of the key frequencies among the non-DC bins. Token i at position i: the ids must be ordered (residues 0..n-1).
    """
    w = weight.to(torch.float64)
    spectrum = torch.fft.rfft(w - w.mean(0), dim=0)  # [n//2+1, D]
    return spectrum.abs().square().sum(1)
