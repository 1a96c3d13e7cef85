"""The universality class of a run (functional / mixed / compression) from its logged post-grok edge statistics.

The criterion is fixed in docs/methods.md §11.4 before any measurement: means over the post-grok windows of
grad%(v₁) (``edge/grad_frac_v1``, a fraction), the v₁ rotation between consecutive windows
(``edge/rotation_v1_deg``) and the edge's functional content Func R² (``fourier_edge/v1/func_r2``).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import t as student_t

# the pre-registered thresholds (docs/methods.md §11.4); grad% as a fraction of 1
COMPRESSION = {"grad_frac_v1": ("<", 0.10), "func_r2_v1": ("<", 0.2), "rotation_v1_deg": ("<", 10.0)}
FUNCTIONAL = {"grad_frac_v1": (">", 0.90), "func_r2_v1": (">", 0.9)}
TAGS = {"grad_frac_v1": "edge/grad_frac_v1", "rotation_v1_deg": "edge/rotation_v1_deg",
        "func_r2_v1": "fourier_edge/v1/func_r2"}


def post_grok_mean(steps: Sequence[int], values: Sequence[float], grok_step: int, confidence: float = 0.95) -> dict:
    """Mean of the finite values at steps ≥ grok_step, with its Student-t interval (NaN below 2 values).

    steps [n], values [n]. The interval treats windows as independent; overlapping windows are correlated, so it
    is too narrow by up to √(overlap) (docs/methods.md §11.4).
    """
    s, v = np.asarray(steps), np.asarray(values, dtype=np.float64)
    if s.shape != v.shape or s.ndim != 1:
        raise ValueError(f"steps and values must be 1-d of one length, got {s.shape} and {v.shape}")
    kept = v[(s >= grok_step) & np.isfinite(v)]
    n = len(kept)
    mean = math.fsum(kept) / n if n else math.nan  # exactly rounded: n copies of x average to x
    if n >= 2:
        half = float(student_t.ppf(0.5 + confidence / 2, n - 1) * kept.std(ddof=1) / math.sqrt(n))
        ci = [mean - half, mean + half]
    else:
        ci = [math.nan, math.nan]
    return {"mean": mean, "ci": ci, "n": n}


def _holds(stat: dict, op: str, threshold: float) -> bool | None:
    """Whether the mean satisfies ``op threshold`` (None if there is no mean)."""
    if stat["n"] == 0:
        return None
    return stat["mean"] < threshold if op == "<" else stat["mean"] > threshold


def _certain(stat: dict, op: str, threshold: float, holds: bool) -> bool:
    """Whether the whole interval lies on the side of the threshold the mean is on."""
    low, high = stat["ci"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return False
    inside = high < threshold if op == "<" else low > threshold
    outside = low >= threshold if op == "<" else high <= threshold
    return inside if holds else outside


def _all(rule: dict, stats: dict) -> tuple[bool | None, dict]:
    """Three-valued AND of a class's criteria (False if one fails, None if none fails but one is unknown)."""
    checks = {name: _holds(stats[name], op, thr) for name, (op, thr) in rule.items()}
    if any(c is False for c in checks.values()):
        return False, checks
    return (None if any(c is None for c in checks.values()) else True), checks


def classify_run(series: Mapping[str, tuple[Sequence[int], Sequence[float]]], grok_step: int,
                 confidence: float = 0.95) -> dict:
    """Class of one run: "compression", "functional", "mixed", or "undecided" when a missing statistic could
    change it.

    series: name -> (steps [n], values [n]) for ``grad_frac_v1`` (fraction), ``rotation_v1_deg`` and
    ``func_r2_v1``; a missing name counts as unmeasured. Compression ⇔ mean grad% < 10 % and Func R² < 0.2 and
    rotation < 10°; functional ⇔ grad% > 90 % and Func R² > 0.9; mixed otherwise (strict inequalities, means over
    steps ≥ grok_step). ``certain`` is True when every interval lies on the same side of its threshold as its mean
    for the criteria that decide: all of the class's for compression/functional, one failing criterion of each for
    mixed.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    unknown = set(series) - set(TAGS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; give {sorted(TAGS)}")
    empty = {"mean": math.nan, "ci": [math.nan, math.nan], "n": 0}
    stats = {name: post_grok_mean(*series[name], grok_step, confidence) if name in series else dict(empty)
             for name in TAGS}
    compression, comp_checks = _all(COMPRESSION, stats)
    functional, func_checks = _all(FUNCTIONAL, stats)
    if compression:
        label, deciding = "compression", [(n, *COMPRESSION[n], True) for n in COMPRESSION]
    elif functional:
        label, deciding = "functional", [(n, *FUNCTIONAL[n], True) for n in FUNCTIONAL]
    elif compression is False and functional is False:
        label = "mixed"
        deciding = []
        for rule, checks in ((COMPRESSION, comp_checks), (FUNCTIONAL, func_checks)):
            failing = [n for n, c in checks.items() if c is False]
            best = max(failing, key=lambda n: _certain(stats[n], *rule[n], False))
            deciding.append((best, *rule[best], False))
    else:
        label, deciding = "undecided", []
    certain = bool(deciding) and all(_certain(stats[n], op, thr, holds) for n, op, thr, holds in deciding)
    return {
        "class": label, "certain": certain, "grok_step": grok_step, "confidence": confidence,
        "statistics": stats, "decided_by": [n for n, *_ in deciding],
        "criteria": {"compression": comp_checks, "functional": func_checks},
    }


def classify_from_scalars(scalars: Mapping[str, tuple[np.ndarray, np.ndarray]], grok_step: int | None,
                          confidence: float = 0.95) -> dict:
    """``classify_run`` on ``lit_grok.report.read_scalars`` output (tags in ``TAGS``); unavailable without grok."""
    if grok_step is None:
        return {"status": "unavailable", "reason": "the run did not grok: the classes are defined after grokking"}
    series = {name: scalars[tag] for name, tag in TAGS.items() if tag in scalars}
    return {"status": "ok", **classify_run(series, grok_step, confidence)}
