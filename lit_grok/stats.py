"""Statistics across replicate runs (docs/methods.md §12.2): mean, std (ddof 1), Student-t and bootstrap intervals."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy.stats import t as student_t


def finite(values: Sequence[float]) -> np.ndarray:
    """The finite values [m] of ``values`` (NaN marks what a run could not measure)."""
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def summarise(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """n, mean, std (ddof 1), median and the Student-t interval mean ± t_{(1+level)/2, n−1}·std/√n of the finite
    values; std and the interval are NaN below 2 values."""
    x = finite(values)
    n = int(x.size)
    out = {"n": n, "mean": math.nan, "std": math.nan, "median": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if n == 0:
        return out
    out["mean"], out["median"] = float(x.mean()), float(np.median(x))
    if n >= 2:
        std = float(x.std(ddof=1))
        half = float(student_t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def bootstrap_ci(samples: Sequence[Sequence[float]], statistic: Callable[..., float], n_boot: int = 10000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``: each sample (finite values [n_i]) is resampled
    with replacement on its own, in order, by one ``numpy.random.default_rng(seed)``. NaN if a sample has < 2 values."""
    arrays = [finite(s) for s in samples]
    if any(a.size < 2 for a in arrays):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        stats[b] = statistic(*(a[rng.integers(0, a.size, a.size)] for a in arrays))
    low, high = np.percentile(stats, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(low), float(high)


def median_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the median."""
    return bootstrap_ci([values], lambda a: float(np.median(a)), seed=seed)


def ratio_of_means_ci(numerator: Sequence[float], denominator: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of mean(numerator) / mean(denominator), the two groups resampled independently."""
    return bootstrap_ci([numerator, denominator], lambda a, b: float(a.mean() / b.mean()), seed=seed)


def inside(value: float, low: float, high: float, rounding: float = 0.0) -> bool | None:
    """Whether ``value`` ± ``rounding`` meets [low, high]; None when the interval does not exist."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return bool(low - rounding <= value <= high + rounding)
