"""Positional DFT and depth-basis spectrum against numpy; planted sinusoids are found; centring removes DC."""
import numpy as np
import pytest
import torch

from callbacks.functional.fourier_attention import grouped_spectrum, positional_power, summarize_spectrum


def numpy_power(reps, mask, centre):
    """Brute force: loop over features, zero the masked positions, rfft each (n, d) signal, average |F|²."""
    N, T, D = reps.shape
    total = np.zeros(T // 2 + 1)
    for d in range(D):
        x = reps[:, :, d].copy()
        if centre:
            x = x - x[mask].mean()
        x[~mask] = 0.0
        total += (np.abs(np.fft.rfft(x, axis=1)) ** 2).sum(0)
    return total / (N * D)


def test_planted_sinusoid_is_found_and_centring_removes_dc():
    rng = np.random.default_rng(0)
    N, T, D, omega = 30, 24, 5, 5
    t = np.arange(T)
    amp, phase = rng.uniform(0.5, 2, (N, 1, D)), rng.uniform(0, 2 * np.pi, (N, 1, D))
    offset = rng.standard_normal(D) * 3  # a mean representation, as every trained model has
    reps = amp * np.cos(2 * np.pi * omega * t[None, :, None] / T + phase) + offset
    mask = torch.ones(N, T, dtype=torch.bool)
    centred = positional_power(torch.from_numpy(reps), mask, centre=True)
    raw = positional_power(torch.from_numpy(reps), mask, centre=False)
    s = summarize_spectrum(centred)
    assert s.omega_star == omega and s.top1 == pytest.approx(1.0, abs=1e-12)
    assert s.dc_share < 1e-20  # the sinusoid sums to 0 over a full period; centring removes the offset
    ref = summarize_spectrum(raw, include_dc=True)
    assert ref.omega_star == 0 and ref.dc_share > 0.5  # uncentred: the mean representation dominates DC
    assert summarize_spectrum(raw).omega_star == omega  # ω* over the non-DC bins is unaffected


def test_power_and_concentration_match_numpy_with_a_ragged_mask():
    rng = np.random.default_rng(1)
    N, T, D = 12, 10, 4
    reps = rng.standard_normal((N, T, D)) + 2.0
    lengths = rng.integers(2, T + 1, N)
    mask = np.arange(T)[None, :] < lengths[:, None]
    for centre in (True, False):
        got = positional_power(torch.from_numpy(reps), torch.from_numpy(mask), centre=centre)
        want = numpy_power(reps, mask, centre)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
        for include_dc in (False, True):
            s = summarize_spectrum(got, include_dc=include_dc)
            counted = want if include_dc else want[1:]
            order = np.sort(counted)[::-1]
            assert s.dc_share == pytest.approx(want[0] / want.sum(), rel=1e-12)
            assert (s.top1, s.top3, s.top5) == pytest.approx(
                (order[0] / counted.sum(), order[:3].sum() / counted.sum(), order[:5].sum() / counted.sum()), rel=1e-12)
            assert s.omega_star == int(np.argmax(counted)) + (0 if include_dc else 1)


def test_grouped_spectrum_matches_numpy_over_the_levels_present():
    rng = np.random.default_rng(2)
    levels = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], size=400)  # 11 levels present
    response = rng.exponential(size=400) + 0.3 * levels
    spec = grouped_spectrum(torch.from_numpy(response), torch.from_numpy(levels))
    present = np.unique(levels)
    s = np.array([response[levels == v].mean() for v in present])
    power = np.abs(np.fft.rfft(s - s.mean())) ** 2
    np.testing.assert_allclose(spec.power.numpy(), power, rtol=1e-10, atol=1e-24)
    assert spec.n_bins == 6 and spec.baseline == pytest.approx(1 / 6)
    assert spec.concentration == pytest.approx(power.max() / power.sum(), rel=1e-10)
    assert spec.omega_star == int(np.argmax(power))
    assert spec.elevation == pytest.approx(6 * power.max() / power.sum(), rel=1e-10)
    assert spec.levels == [float(v) for v in present]


def test_grouped_spectrum_finds_a_planted_level_frequency_and_skips_absent_levels():
    levels = np.repeat([0, 1, 2, 3, 5, 6, 7, 8, 9], 7)  # level 4 absent: 9 groups -> 5 bins
    idx = np.searchsorted(np.unique(levels), levels)
    response = 4.0 + np.cos(2 * np.pi * 2 * idx / 9)
    spec = grouped_spectrum(torch.from_numpy(response), torch.from_numpy(levels))
    assert spec.n_bins == 5 and spec.omega_star == 2
    assert spec.concentration == pytest.approx(1.0, abs=1e-12) and spec.elevation == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at least 2 distinct target values"):
        grouped_spectrum(torch.ones(5), torch.zeros(5))
