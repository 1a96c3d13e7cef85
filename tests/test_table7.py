"""Table-7 summaries (docs/methods.md §4.7) against hand-computed rows and a numpy brute force of g₂₃, k*, R."""
import math

import numpy as np
import pytest
import torch

from callbacks.functional.gram_spectrum import edge_statistics, window_spectrum
from callbacks.functional.table7 import table7_from_scalars, table7_reference, table7_robust

# a hand-made grokking run: windows every 100 steps, grok at 600
STEPS = [200, 300, 400, 500, 600, 700, 800]
G23 = [2.0, 5.0, 3.0, 4.0, 0.5, 0.1, 7.0]
KSTAR = [1, 1, 2, 1, 1, 2, 2]
R = [3.0, 4.0, 1.5, 2.5, 6.0, 9.0, 1.0]


def brute_gap_stats(x: np.ndarray) -> tuple[float, int, float]:
    """g₂₃, k*, R of one window X [w, P] by numpy SVD and explicit loops (the rule of docs/methods.md §4.4)."""
    s = np.linalg.svd(x, compute_uv=False)
    w = len(s)
    g23 = s[1] ** 2 - s[2] ** 2 if w > 2 else s[1] ** 2
    if s.sum() < 1e-12:
        return g23, 1, 1.0
    scores = []
    for j in range(w - 1):
        ratio = s[j] / s[j + 1] if s[j + 1] >= 1e-12 else 1e6
        scores.append(s[j] / s.sum() * ratio)
    k = int(np.argmax(scores)) + 1
    return g23, k, (s[k - 1] / s[k] if s[k] >= 1e-12 else 1e6)


def test_reference_row_by_hand():
    row = table7_reference(STEPS, G23, KSTAR, R, grok_step=600)
    # pre = steps 200..600: max 5.0 at 300, last 0.5 at 600
    assert row["g23_early"] == 5.0 and row["g23_early_step"] == 300
    assert row["g23_grok"] == 0.5 and row["g23_grok_step"] == 600
    assert row["decline"] == pytest.approx(10.0)
    assert row["n_increases"] == 1 and row["monotonic"] is True  # 5 → 3 → 4 → 0.5: one increase
    assert row["R_early"] == pytest.approx(np.mean([3.0, 4.0, 1.5, 2.5, 6.0]))
    assert row["R_grok"] == 6.0
    assert row["k_star_mode"] == 1 and row["k_star_frac_1"] == pytest.approx(4 / 7)


def test_reference_two_increases_are_not_monotone_and_order_does_not_matter():
    g = [2.0, 5.0, 3.0, 4.0, 1.0, 2.0]
    perm = [5, 0, 3, 1, 4, 2]
    steps = [100 * (i + 1) for i in range(6)]
    row = table7_reference([steps[i] for i in perm], [g[i] for i in perm], [1] * 6, [1.0] * 6, grok_step=600)
    assert row["n_increases"] == 2 and row["monotonic"] is False
    assert row["g23_grok"] == 2.0 and row["decline"] == pytest.approx(2.5)


def test_reference_control_rule():
    row = table7_reference(STEPS, G23, KSTAR, R, grok_step=None)
    assert row["g23_early"] == 7.0 and row["g23_grok"] == 7.0 and row["decline"] == pytest.approx(1.0)
    assert row["R_early"] == pytest.approx(np.mean([3.0, 4.0, 1.5]))  # first ⌊7/2⌋ = 3 windows
    assert row["R_grok"] == 1.0 and row["monotonic"] is None


def test_reference_guards():
    # a closed gap at grok: the 1e-12 guard gives an infinite decline, as the reference does
    row = table7_reference([100, 200], [3.0, 1e-13], [1, 1], [1.0, 1.0], grok_step=200)
    assert row["decline"] == math.inf
    # no window before grok: the reference falls back on the first window
    row = table7_reference([700, 800], [3.0, 1.0], [1, 1], [2.0, 5.0], grok_step=600)
    assert row["g23_early_step"] == 700 and row["g23_grok_step"] == 700 and row["R_grok"] == 2.0
    with pytest.raises(ValueError, match="repeat"):
        table7_reference([100, 100], [1.0, 1.0], [1, 1], [1.0, 1.0], grok_step=100)


def test_k_star_mode_ties_take_the_first_seen():
    row = table7_reference([1, 2, 3, 4], [1.0] * 4, [2, 1, 1, 2], [1.0] * 4, grok_step=4)
    assert row["k_star_mode"] == 2 and row["k_star_frac_1"] == 0.5


def brute_theil_sen(x: np.ndarray, y: np.ndarray) -> float:
    """Median of the slopes of every pair of points."""
    return float(np.median([(y[j] - y[i]) / (x[j] - x[i]) for i in range(len(x)) for j in range(i + 1, len(x))]))


def test_robust_row_by_hand():
    row = table7_robust(STEPS, G23, KSTAR, R, grok_step=600)
    # pre-grok windows 200..500: median(2, 5, 3, 4) = 3.5; grok span [600, 900]: 600, 700, 800 → median(0.5, 0.1, 7)
    assert row["n_early"] == 4 and row["n_grok"] == 3
    assert row["g23_early"] == pytest.approx(3.5) and row["g23_grok"] == pytest.approx(0.5)
    assert row["decline"] == pytest.approx(7.0)
    assert row["R_pre"] == pytest.approx(2.75) and row["R_grok"] == pytest.approx(6.0)
    slope = brute_theil_sen(np.array(STEPS[:5], float), np.log(G23[:5]))  # windows 200..600
    assert row["n_fit"] == 5 and row["log_slope_per_step"] == pytest.approx(slope)
    low, high = row["log_slope_ci"]
    assert low <= slope <= high
    # control: anchored on the twin's grok step, or on the last step
    assert table7_robust(STEPS, G23, KSTAR, R, None, anchor_step=600)["decline"] == pytest.approx(7.0)
    assert table7_robust(STEPS, G23, KSTAR, R, None)["anchor_step"] == 800


def test_robust_empty_span_and_closed_gap():
    row = table7_robust([600, 800], [3.0, 1.0], [1, 1], [1.0, 1.0], grok_step=600)
    assert row["n_early"] == 0 and math.isnan(row["g23_early"]) and math.isnan(row["decline"])  # NaN, not 0
    assert math.isnan(row["log_slope_ci"][0])  # one fitted window: no slope interval
    row = table7_robust([200, 400, 600], [4.0, 2.0, 0.0], [1] * 3, [1.0] * 3, grok_step=600)
    assert row["decline"] == math.inf and row["n_fit"] == 2  # the closed gap is left out of the log fit


def test_robust_resists_a_spike_the_reference_max_picks_up():
    steps = np.arange(100, 1001, 100)
    g = np.where(steps < 600, 8.0, 2.0)
    g_spike = g.copy()
    g_spike[1] *= 50
    clean, spiked = (table7_robust(steps, v, np.ones(10), np.ones(10), 600)["decline"] for v in (g, g_spike))
    assert clean == pytest.approx(4.0) and spiked == pytest.approx(4.0)
    assert table7_reference(steps, g_spike, np.ones(10), np.ones(10), 600)["decline"] == pytest.approx(200.0)


def test_brute_force_series_with_two_row_windows_and_zero_sigmas():
    """Rolling windows (w = min(3, i+1), w ≥ 2) of random rows, some exactly zero or repeated: edge_statistics of
    the Gram spectrum equals the numpy SVD brute force, and the summary of that series equals the hand rule."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(12, 40)) * np.exp(-np.arange(12) / 4)[:, None]
    rows[5] = 0.0  # a zero row: σ₃ = 0 in the windows that hold it with two others
    steps, g23, ks, rs = [], [], [], []
    for i in range(1, 12):
        x = rows[max(0, i - 2): i + 1]
        sigma, _ = window_spectrum(torch.tensor(x @ x.T))
        stats = edge_statistics(sigma)
        g_b, k_b, r_b = brute_gap_stats(x)
        assert stats["g23"] == pytest.approx(g_b, rel=1e-8, abs=1e-10)
        assert stats["k_star"] == k_b and stats["gap_ratio"] == pytest.approx(r_b, rel=1e-6)
        steps.append(100 * (i + 1))
        g23.append(stats["g23"]), ks.append(stats["k_star"]), rs.append(stats["gap_ratio"])
    assert len(rows[0:2]) == 2  # the first window has w = 2, g₂₃ = σ₂²
    zero = edge_statistics(torch.zeros(3, dtype=torch.float64))
    assert zero["k_star"] == 1 and zero["gap_ratio"] == 1.0  # Σσ < 1e-12
    row = table7_reference(steps, g23, ks, rs, grok_step=800)
    pre = [j for j, s in enumerate(steps) if s <= 800]
    early = max(pre, key=lambda j: (g23[j], -j))
    assert row["g23_early"] == g23[early] and row["g23_grok"] == g23[pre[-1]]
    assert row["R_early"] == pytest.approx(np.mean([rs[j] for j in pre]))


def test_robust_decline_does_not_depend_on_cadence():
    """g₂₃ = c²·(8 before step 550, 2 after) × lognormal noise, windows from step 2c (the first with 2 rows): at
    cadence c = 50, 100, 200 the robust decline stays near 4 despite the c² scale and the window count, while the
    reference's max/last grows with the number of pre-grok windows; the log slope is invariant to the c² scale."""
    rng = np.random.default_rng(3)
    for cadence in (50, 100, 200):
        steps = np.arange(2 * cadence, 1201, cadence)
        g = cadence**2 * np.where(steps < 550, 8.0, 2.0) * np.exp(rng.normal(0, 0.2, size=steps.shape))
        row = table7_robust(steps, g, np.ones_like(steps), np.ones(len(steps)), grok_step=600)
        assert row["decline"] == pytest.approx(4.0, rel=0.3), cadence
        smooth = cadence**2 * np.exp(-steps / 200)
        fitted = table7_robust(steps, smooth, np.ones_like(steps), np.ones(len(steps)), grok_step=600)
        assert fitted["log_slope_per_step"] == pytest.approx(-1 / 200)


def test_from_scalars_aligns_tags_and_reports_missing():
    scalars = {
        "edge/g23": (np.array(STEPS), np.array(G23)),
        "edge/k_star": (np.array(STEPS), np.array(KSTAR, dtype=float)),
        "edge/gap_ratio": (np.array([100] + STEPS), np.array([99.0] + R)),  # an extra step is ignored
    }
    out = table7_from_scalars(scalars, grok_step=600)
    assert out["status"] == "ok" and out["reference"]["decline"] == pytest.approx(10.0)
    assert out["robust"]["decline"] == pytest.approx(7.0) and out["robust"]["n_fit"] == 5
    assert table7_from_scalars({"edge/g23": scalars["edge/g23"]}, 600)["status"] == "unavailable"
