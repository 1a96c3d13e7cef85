"""The pre-registered universality classifier (docs/methods.md §11.4) on synthetic post-grok series."""
import math

import numpy as np
import pytest

from callbacks.functional.universality import classify_from_scalars, classify_run, post_grok_mean

GROK = 600
STEPS = np.arange(100, 2100, 100)  # 20 windows, 15 of them at steps ≥ 600


def series(post: float, spread: float = 0.0, pre: float = 123.0, seed: int = 0):
    """Values `pre` before grok (must be ignored) and post ± a deterministic zero-mean pattern after."""
    rng = np.random.default_rng(seed)
    after = STEPS >= GROK
    noise = rng.normal(size=after.sum())
    noise = (noise - noise.mean()) / noise.std() * spread if spread else np.zeros(after.sum())
    values = np.full(len(STEPS), pre)
    values[after] = post + noise
    return STEPS, values


def run(grad, func, rot, spread=(0.0, 0.0, 0.0)):
    return classify_run({"grad_frac_v1": series(grad, spread[0]), "func_r2_v1": series(func, spread[1], seed=1),
                         "rotation_v1_deg": series(rot, spread[2], seed=2)}, GROK)


def test_mean_and_interval_by_hand():
    steps, values = [500, 600, 700, 800, 900, 1000], [9.0, 1.0, 2.0, 3.0, 4.0, float("nan")]
    stat = post_grok_mean(steps, values, GROK)
    x = np.array([1.0, 2.0, 3.0, 4.0])  # step 500 is pre-grok, the NaN is dropped
    half = 3.182446305284263 * x.std(ddof=1) / 2  # t_{0.975, 3}
    assert stat["n"] == 4 and stat["mean"] == pytest.approx(2.5)
    assert stat["ci"] == pytest.approx([2.5 - half, 2.5 + half])
    one = post_grok_mean([600], [0.3], GROK)
    assert one["mean"] == 0.3 and all(math.isnan(c) for c in one["ci"])


def test_each_class_from_its_paper_values():
    scan = run(0.02, 0.04, 8.0, spread=(0.005, 0.01, 1.0))  # the paper's SCAN row
    assert scan["class"] == "compression" and scan["certain"]
    assert scan["statistics"]["grad_frac_v1"]["mean"] == pytest.approx(0.02)  # the pre-grok 123s are ignored
    dyck = run(0.87, 0.80, 18.0, spread=(0.02, 0.02, 2.0))  # the paper's Dyck row
    assert dyck["class"] == "mixed" and dyck["certain"]
    modular = run(0.97, 0.95, 25.0, spread=(0.01, 0.01, 3.0))
    assert modular["class"] == "functional" and modular["certain"]
    assert modular["decided_by"] == ["grad_frac_v1", "func_r2_v1"]


def test_boundaries_are_strict():
    assert run(0.10, 0.1, 5.0)["class"] == "mixed"  # grad% exactly 10 % is not compression
    assert run(0.0999, 0.1, 5.0)["class"] == "compression"
    assert run(0.05, 0.2, 5.0)["class"] == "mixed"  # Func R² exactly 0.2
    assert run(0.05, 0.1, 10.0)["class"] == "mixed"  # rotation exactly 10°
    assert run(0.90, 0.95, 5.0)["class"] == "mixed"  # grad% exactly 90 % is not functional
    assert run(0.9001, 0.9001, 50.0)["class"] == "functional"
    assert run(0.95, 0.9, 5.0)["class"] == "mixed"


def test_an_interval_across_a_threshold_is_not_certain():
    wide = run(0.05, 0.1, 9.0, spread=(0.0, 0.0, 3.0))  # rotation 9° ± a 95 % interval that crosses 10°
    assert wide["class"] == "compression" and not wide["certain"]
    low, high = wide["statistics"]["rotation_v1_deg"]["ci"]
    assert low < 10.0 < high


def test_missing_statistics_leave_the_class_undecided_only_when_they_could_change_it():
    only_grad = classify_run({"grad_frac_v1": series(0.5)}, GROK)
    assert only_grad["class"] == "mixed"  # grad% = 50 % fails both classes whatever Func R² is
    assert classify_run({"grad_frac_v1": series(0.02), "rotation_v1_deg": series(5.0)}, GROK)["class"] == "undecided"
    with pytest.raises(ValueError, match="unknown"):
        classify_run({"grad_pct": series(0.5)}, GROK)


def test_from_scalars_reads_the_logged_tags():
    scalars = {"edge/grad_frac_v1": series(0.02), "edge/rotation_v1_deg": series(5.0),
               "fourier_edge/v1/func_r2": series(0.05)}
    assert classify_from_scalars(scalars, GROK)["class"] == "compression"
    assert classify_from_scalars(scalars, None)["status"] == "unavailable"
