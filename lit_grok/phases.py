"""Phases of one run from its own logs (docs/methods.md §12.1): grok step, v₁ flip, and grok-aligned phase steps.

Pure functions on the arrays a run logged (steps [n], values [n]); nothing here knows the task. A *family* is a
kind of measurement with its own cadence: ``window`` (per-window scalars of the recorder's analyses, every row),
``causal`` (ablation, perturbation, Fourier / attention: a few scheduled steps), ``probe`` (the probes).
"""
from __future__ import annotations

import math
from typing import Mapping, Union

import numpy as np

FIRST = "first"  # the family's first measurement
BEFORE = "before"  # the family's last measurement before the grok step
Rule = Union[int, str]  # an offset from the grok step, FIRST or BEFORE

# Offsets from each run's grok step g (docs/methods.md §12.1). For Dyck seed 42 (g = 600) they give the reference's
# phases: windows ending at 300 / 600 / 1500 / 4000; causal tests at 200 / 500 / 600 / 1400 / 3900 (the shipped
# causal configs' step_200, step_500, grok+0, grok+800, grok+3300); probes at 200 / 600 / 2000 / 3900.
ALIGNED: dict[str, dict[str, Rule]] = {
    "window": {"pre": -300, "at": 0, "post": 900, "late": 3400},
    "causal": {"early": FIRST, "pre": BEFORE, "at": 0, "post": 800, "late": 3300},
    "probe": {"pre": BEFORE, "at": 0, "post": 1400, "late": 3300},
}
# The reference scripts' fixed steps (docs/methods.md §12.1), per task (the data module's module name).
REFERENCE: dict[str, dict[str, dict[str, int]]] = {
    "dyck": {
        "window": {"pre": 300, "at": 600, "post": 1500, "late": 4000},
        "causal": {"early": 200, "pre": 500, "at": 600, "post": 1400, "late": 3900},
        "probe": {"pre": 200, "at": 600, "post": 2000, "late": 3900},
    },
    "scan": {
        "window": {"early": 1000, "pre": 2500, "at": 5000, "post": 10000},
        "causal": {"pre": 2000, "at": 4500, "post": 9500},
        "probe": {"pre": 2000, "at": 4500, "post": 9500},
    },
}
PHASE_ORDER = ("early", "pre", "at", "post", "late", "final")


def grok_crossing(steps: np.ndarray, values: np.ndarray, threshold: float) -> tuple[float, float]:
    """(first evaluation step with value ≥ threshold, the linear crossing between it and the evaluation before).

    steps [n] ascending optimizer steps of the evaluations, values [n]. The crossing is
    s₀ + (threshold − a₀)/(a₁ − a₀)·(s₁ − s₀) for the evaluations (s₀, a₀) < threshold ≤ (s₁, a₁); it is s₁
    when the first evaluation already reaches the threshold. (NaN, NaN) if none does.
    """
    hit = np.nonzero(np.asarray(values) >= threshold)[0]
    if not hit.size:
        return math.nan, math.nan
    i = int(hit[0])
    s1, a1 = float(steps[i]), float(values[i])
    if i == 0:
        return s1, s1
    s0, a0 = float(steps[i - 1]), float(values[i - 1])
    return s1, s0 + (threshold - a0) / (a1 - a0) * (s1 - s0)


def flip_and_return(steps: np.ndarray, grad_frac: np.ndarray, level: float = 0.5) -> tuple[float, float]:
    """(first window step whose grad% < level, first later window step back ≥ level); NaN where none.

    steps [n] ascending window-end steps, grad_frac [n] the gradient share of v₁ (edge/grad_frac_v1) in [0, 1].
    """
    grad_frac = np.asarray(grad_frac)
    below = np.nonzero(grad_frac < level)[0]
    if not below.size:
        return math.nan, math.nan
    i = int(below[0])
    back = np.nonzero(grad_frac[i + 1 :] >= level)[0]
    return float(steps[i]), float(steps[i + 1 + int(back[0])]) if back.size else math.nan


def phase_step(rule: Rule, grok: float, measured: np.ndarray) -> float:
    """The step a phase reads: ``grok + rule`` for an offset, else the first / last-before-grok of ``measured``
    (ascending steps [n] at which the quantity was measured). NaN when it does not exist."""
    measured = np.asarray(measured)
    if rule == FIRST:
        return float(measured[0]) if measured.size else math.nan
    if rule == BEFORE:
        before = measured[measured < grok] if math.isfinite(grok) else measured[:0]
        return float(before[-1]) if before.size else math.nan
    if isinstance(rule, str):
        raise ValueError(f"unknown phase rule {rule!r}: an integer offset, {FIRST!r} or {BEFORE!r}")
    step = grok + rule
    return step if math.isfinite(step) and step >= 0 else math.nan


def phase_steps(rules: Mapping[str, Rule], grok: float, measured: np.ndarray, final: float) -> dict[str, float]:
    """phase -> step for one family of one run (``final``: the run's last step, always a phase). A FIRST phase
    that falls on another phase's step is NaN: one measurement is not read twice under two names."""
    out = {phase: phase_step(rule, grok, measured) for phase, rule in rules.items()}
    for phase, rule in rules.items():
        if rule == FIRST and any(out[phase] == step for other, step in out.items() if other != phase):
            out[phase] = math.nan
    out["final"] = float(final)
    return out
