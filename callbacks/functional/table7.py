"""The per-run Table-7 summary of the logged gap series g₂₃, k*, R (docs/methods.md §4.7).

Inputs are the series ``GramSpectrum`` logs (``edge/g23``, ``edge/k_star``, ``edge/gap_ratio``), one value per
window, labelled with the step its newest row ends at. Two summaries:

* ``table7_reference``: the reference's windowing exactly (max / last value before the grok step);
* ``table7_robust``: the ratio of the median g₂₃ over every pre-grok window to the median over a span of steps
  from the grok step on; a median, unlike a maximum, does not grow with the number of windows. It does not remove
  the cadence dependence of g₂₃ itself (a window of W c-step rows spans W·c steps): report the cadence with it.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import theilslopes

from .gram_spectrum import EPS

TAGS = {"g23": "edge/g23", "k_star": "edge/k_star", "gap_ratio": "edge/gap_ratio"}
MONOTONIC_TOL = 1  # at most this many increases of g₂₃ between the early step and the grok step
GROK_SPAN = 1.5  # robust: the gap at grokking is the median over the windows at steps a .. 1.5·a


def _series(steps: Sequence[int], g23: Sequence[float], k_star: Sequence[float], gap_ratio: Sequence[float]):
    """Check and sort the series: steps [n] int64, g23 [n], k_star [n] int64, R [n] float64."""
    s = np.asarray(steps, dtype=np.int64)
    g, k, r = (np.asarray(a, dtype=np.float64) for a in (g23, k_star, gap_ratio))
    if not (s.ndim == g.ndim == k.ndim == r.ndim == 1 and s.shape == g.shape == k.shape == r.shape):
        raise ValueError(f"steps, g23, k_star, gap_ratio must be 1-d of one length, got {[a.shape for a in (s, g, k, r)]}")
    if len(np.unique(s)) != len(s):
        raise ValueError("steps repeat: give one value per window")
    order = np.argsort(s, kind="stable")
    return s[order], g[order], k[order].astype(np.int64), r[order]


def k_star_summary(k_star: np.ndarray) -> dict:
    """Mode of k* over every window (ties: the value seen first) and the fraction of windows with k* = 1."""
    values, first, counts = np.unique(k_star, return_index=True, return_counts=True)
    best = [i for i in range(len(values)) if counts[i] == counts.max()]
    mode = values[min(best, key=lambda i: first[i])]
    return {"k_star_mode": int(mode), "k_star_frac_1": float(np.mean(k_star == 1)), "n_windows": int(len(k_star))}


def _ratio(top: float, bottom: float) -> float:
    """top / bottom with the 10⁻¹² guard of the reference: inf when the denominator gap has closed."""
    return top / bottom if bottom > EPS else math.inf


def table7_reference(steps: Sequence[int], g23: Sequence[float], k_star: Sequence[float],
                     gap_ratio: Sequence[float], grok_step: int | None) -> dict:
    """The reference's Table-7 row of one run (ref ``thesis_table7_replication.py``).

    Grokking run (``grok_step`` given): pre = windows at steps ≤ grok (the first window if none is);
    g23_early = max over pre (first maximum) at g23_early_step, g23_grok = the last of pre, decline = their ratio
    (inf when g23_grok ≤ 10⁻¹²), n_increases = increases of g₂₃ over the windows from g23_early_step to the grok
    step, monotonic ⇔ n_increases ≤ 1, R_early = mean R over pre, R_grok = the last of pre.
    Control (``grok_step`` None): g23_early = the global maximum, g23_grok = the final value, R_early = mean R over
    the first ⌊n/2⌋ windows, R_grok = the final value; monotonic is None. Both: k* mode and fraction k* = 1 over
    every window.
    """
    s, g, k, r = _series(steps, g23, k_star, gap_ratio)
    if len(s) == 0:
        raise ValueError("no windows: the run logged no edge/g23")
    out: dict = {"variant": "reference", "grok_step": grok_step, **k_star_summary(k)}
    if grok_step is None:
        i_max = int(np.argmax(g))
        half = r[: len(r) // 2]
        out.update({
            "g23_early": float(g[i_max]), "g23_early_step": int(s[i_max]), "g23_grok": float(g[-1]),
            "g23_grok_step": int(s[-1]), "decline": _ratio(float(g[i_max]), float(g[-1])),
            "n_increases": None, "monotonic": None,
            "R_early": float(half.mean()) if len(half) else math.nan, "R_grok": float(r[-1]),
        })
        return out
    pre = np.nonzero(s <= grok_step)[0]
    if len(pre) == 0:
        pre = np.array([0])  # the reference falls back on the first window
    i_max = int(pre[np.argmax(g[pre])])
    i_last = int(pre[-1])
    between = g[(s >= s[i_max]) & (s <= grok_step)]
    n_increases = int(np.sum(np.diff(between) > 0))
    out.update({
        "g23_early": float(g[i_max]), "g23_early_step": int(s[i_max]), "g23_grok": float(g[i_last]),
        "g23_grok_step": int(s[i_last]), "decline": _ratio(float(g[i_max]), float(g[i_last])),
        "n_increases": n_increases, "monotonic": n_increases <= MONOTONIC_TOL,
        "R_early": float(r[pre].mean()), "R_grok": float(r[i_last]),
    })
    return out


def table7_robust(steps: Sequence[int], g23: Sequence[float], k_star: Sequence[float], gap_ratio: Sequence[float],
                  grok_step: int | None, anchor_step: int | None = None, grok_span: float = GROK_SPAN,
                  confidence: float = 0.95) -> dict:
    """The cadence-robust Table-7 row (docs/methods.md §4.7).

    With a = the grok step (for a control: ``anchor_step``, e.g. the grok step of its ω > 0 twin, else the last
    logged step): g23_early = median g₂₃ over the windows at steps in (0, a), g23_grok = median over [a, grok_span·a],
    decline = their ratio (inf under the 10⁻¹² guard, NaN when a span holds no window), with n_early / n_grok; R_pre
    and R_grok the same medians of R; the Theil–Sen slope of ln g₂₃ against the step over (0, a] (windows with
    g₂₃ > 10⁻¹², its ``confidence`` interval from ≥ 3 windows); k* mode and fraction k* = 1 over every window.
    """
    s, g, k, r = _series(steps, g23, k_star, gap_ratio)
    if len(s) == 0:
        raise ValueError("no windows: the run logged no edge/g23")
    if not 0 < confidence < 1 or not grok_span >= 1:
        raise ValueError(f"need confidence in (0, 1) and grok_span >= 1, got {confidence} and {grok_span}")
    anchor = grok_step if grok_step is not None else (anchor_step if anchor_step is not None else int(s[-1]))
    early = (s > 0) & (s < anchor)
    late = (s >= anchor) & (s <= grok_span * anchor)
    median = lambda v, sel: float(np.median(v[sel])) if sel.any() else math.nan  # noqa: E731
    g_early, g_grok = median(g, early), median(g, late)
    fit = (s > 0) & (s <= anchor) & (g > EPS)
    n_fit = int(fit.sum())
    slope, low, high = math.nan, math.nan, math.nan
    if n_fit >= 2:
        slope, _, lo, hi = theilslopes(np.log(g[fit]), s[fit].astype(np.float64), alpha=confidence)
        slope = float(slope)
        if n_fit >= 3:
            low, high = float(lo), float(hi)
    return {
        "variant": "robust", "grok_step": grok_step, "anchor_step": int(anchor),
        "grok_span": [int(anchor), grok_span * anchor],
        "g23_early": g_early, "g23_grok": g_grok, "n_early": int(early.sum()), "n_grok": int(late.sum()),
        "decline": _ratio(g_early, g_grok) if early.any() and late.any() else math.nan,
        "R_pre": median(r, early), "R_grok": median(r, late),
        "n_fit": n_fit, "log_slope_per_step": slope, "log_slope_ci": [low, high], **k_star_summary(k),
    }


def table7_from_scalars(scalars: Mapping[str, tuple[np.ndarray, np.ndarray]], grok_step: int | None,
                        anchor_step: int | None = None) -> dict:
    """Both Table-7 rows of a run from ``lit_grok.report.read_scalars`` output (tag -> (steps [n], values [n])).

    Uses the windows where all of ``edge/g23``, ``edge/k_star``, ``edge/gap_ratio`` were logged. Returns
    {"reference": ..., "robust": ...}, or {"status": "unavailable", "reason": ...} when the run has no such window.
    """
    missing = [tag for tag in TAGS.values() if tag not in scalars]
    if missing:
        return {"status": "unavailable", "reason": f"the run logged no {missing} (add GramSpectrum)"}
    series = {name: dict(zip(np.asarray(scalars[tag][0]).tolist(), np.asarray(scalars[tag][1]).tolist()))
              for name, tag in TAGS.items()}
    common = sorted(set(series["g23"]) & set(series["k_star"]) & set(series["gap_ratio"]))
    if not common:
        return {"status": "unavailable", "reason": "edge/g23, edge/k_star and edge/gap_ratio share no step"}
    args = [common] + [[series[name][step] for step in common] for name in ("g23", "k_star", "gap_ratio")]
    return {"status": "ok", "reference": table7_reference(*args, grok_step),
            "robust": table7_robust(*args, grok_step, anchor_step)}
