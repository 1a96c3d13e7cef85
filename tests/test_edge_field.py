"""Statistics of the perturbation-response field f_k (docs/methods.md §6.5): planted fields with known answers,
and the callback's logged values against a manual perturbation of a toy encoder."""
import math

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.linear_model import Ridge

from callbacks import FourierAttentionCallback, GramSpectrum, UpdateRecorder
from callbacks.functional.fourier_attention import (
    field_pearson, positional_field_spectrum, reference_func_r2, token_ratio,
)
from callbacks.functional.probe import run_probes
from callbacks.utils.param_selection import split_like
from probe_toy_model import ToyEncoder, trainer


def planted_delta(n=20000, d=8, noise=1.0, seed=0):
    """Δh_t = depth_t · a + noise·ξ_t, ξ ~ N(0, I): the best linear read-out of depth has
    R² = SNR / (1 + SNR) with SNR = ‖a‖² Var(depth) / noise²."""
    rng = np.random.default_rng(seed)
    depth = rng.integers(0, 11, size=n).astype(np.float64)
    a = rng.normal(size=d)
    delta = depth[:, None] * a + noise * rng.normal(size=(n, d))
    snr = (a @ a) * depth.var() / noise**2
    groups = np.arange(n) // 20  # 20 tokens per "sequence"
    return torch.from_numpy(delta), torch.from_numpy(depth), groups, snr / (1 + snr)


@pytest.mark.parametrize("noise", [2.0, 6.0])
def test_func_r2_of_a_planted_field_is_the_analytic_value(noise):
    delta, depth, groups, expected = planted_delta(noise=noise)
    assert 0.3 < expected < 0.99
    assert reference_func_r2(delta, depth) == pytest.approx(expected, abs=0.02)
    grouped = run_probes(delta.numpy(), depth.numpy(), groups, False, ("linear",), max_tokens=None)[0]
    assert grouped.value == pytest.approx(expected, abs=0.02)


def test_reference_split_is_the_seeded_token_permutation():
    delta, depth, _, _ = planted_delta(n=200, noise=3.0)
    order = np.random.RandomState(42).permutation(200)
    x, y = delta.numpy(), depth.numpy()
    fit = Ridge(alpha=1.0).fit(x[order[:140]], y[order[:140]])
    resid = y[order[140:]] - fit.predict(x[order[140:]])
    expected = 1 - (resid @ resid) / ((y[order[140:]] - y[order[140:]].mean()) ** 2).sum()
    assert reference_func_r2(delta, depth) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        reference_func_r2(delta[:3], depth[:3])


def test_pearson_of_a_planted_field():
    rng = np.random.default_rng(1)
    depth = rng.integers(0, 11, size=50000).astype(np.float64)
    f = depth + 2.0 * rng.normal(size=depth.shape)
    expected = depth.std() / math.sqrt(depth.var() + 4.0)
    assert field_pearson(torch.from_numpy(f), torch.from_numpy(depth)) == pytest.approx(expected, abs=0.01)
    assert field_pearson(torch.from_numpy(f[:100]), torch.from_numpy(depth[:100])) == pytest.approx(
        np.corrcoef(f[:100], depth[:100])[0, 1], rel=1e-12)
    assert math.isnan(field_pearson(torch.ones(5), torch.arange(5.0)))


def test_token_ratio():
    tokens = torch.tensor([0, 0, 0, 1, 1, 2])
    f = torch.tensor([1.0, 1.0, 4.0, 3.0, 5.0, 100.0])
    out = token_ratio(f, tokens)
    assert out["pair"] == [0, 1] and out["ratio"] == pytest.approx(2.0 / 4.0)  # 0 most frequent, then 1
    assert token_ratio(f, tokens, (1, 2))["ratio"] == pytest.approx(4.0 / 100.0)
    assert token_ratio(torch.tensor([1.0, 2.0]), torch.tensor([3, 4]))["pair"] == [3, 4]  # tie: smaller id first
    assert math.isnan(token_ratio(f, tokens, (0, 7))["ratio"])  # an absent token: NaN, not 0


def test_positional_spectrum_of_a_planted_field():
    T = 24
    t = torch.arange(T, dtype=torch.float64)
    field = (1.0 + torch.cos(2 * math.pi * 3 * t / T)).repeat(10, 1)  # [10, 24]
    mask = torch.ones(10, T, dtype=torch.bool)
    mask[0, 5:] = False  # one short sequence: the other nine still give every position's mean
    field[0, 5:] = 1e6  # ... and what it holds beyond its mask is ignored
    out = positional_field_spectrum(field, mask)
    # DC bin 24² = 576, bin 3 (24/2)² = 144: F = 576 / 720, ω* = 0 (DC kept, as the reference)
    assert out["power"][0] == pytest.approx(576.0) and out["power"][3] == pytest.approx(144.0)
    assert out["F"] == pytest.approx(0.8) and out["omega_star"] == 0 and out["n_positions"] == T
    mask[:, 20:] = False  # positions valid in no sequence are dropped
    assert positional_field_spectrum(field, mask)["n_positions"] == 20


def test_callback_logs_match_a_manual_perturbation(tmp_path):
    torch.manual_seed(0)
    model = ToyEncoder(n_val=30)
    cb = FourierAttentionCallback(attention=[], steps=[5], response_module="ln_f", response_target="count",
                                  token_target="token", directions=[1], max_sequences=None)
    recorder, spectrum, seen = UpdateRecorder(interval=1, window=3), GramSpectrum(top_k=3), {}

    class Reference(Callback):  # runs before cb at step 5, with the same weights and Gram window
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step != 5:
                return
            params = recorder.selection.params
            theta = recorder.flat_params().double()
            v = spectrum.directions([1])[0].double()
            eps = 0.005 * theta.norm()
            x, y = model.val_data
            h, h2, _ = model.manual_response(params, split_like(theta + eps * v, params))
            keep = (y != -100).numpy()
            field = ((h2 - h).double().numpy() ** 2).sum(-1)  # [N, T]
            f, depth, tok = field[keep], y.numpy()[keep], x.numpy()[keep]
            ids, counts = np.unique(tok, return_counts=True)
            first, second = ids[np.lexsort((ids, -counts))][:2]
            s = np.array([field[keep[:, t], t].mean() for t in range(x.shape[1]) if keep[:, t].any()])
            power = np.abs(np.fft.rfft(s)) ** 2
            dh = (h2 - h).double().numpy()[keep]
            order = np.random.RandomState(42).permutation(len(depth))
            n_train = int(0.7 * len(depth))
            fit = Ridge(alpha=1.0).fit(dh[order[:n_train]], depth[order[:n_train]])
            rest = depth[order[n_train:]]
            r2 = 1 - ((rest - fit.predict(dh[order[n_train:]])) ** 2).sum() / ((rest - rest.mean()) ** 2).sum()
            seen.update(pearson=np.corrcoef(f, depth)[0, 1], ratio=f[tok == first].mean() / f[tok == second].mean(),
                        pos_F=power.max() / power.sum(), pos_omega=int(np.argmax(power)), ref_r2=r2)

    tr = trainer(tmp_path, [recorder, spectrum, Reference(), cb], max_steps=5)
    tr.fit(model)
    logged = tr.logger.merged("")[5]
    assert logged["fourier_edge/v1/pearson"] == pytest.approx(seen["pearson"], rel=1e-3)
    assert logged["fourier_edge/v1/token_ratio"] == pytest.approx(seen["ratio"], rel=1e-3)
    assert logged["fourier_edge/v1/pos_F"] == pytest.approx(seen["pos_F"], rel=1e-3)
    assert logged["fourier_edge/v1/pos_omega_star"] == seen["pos_omega"]
    assert logged["fourier_edge/v1/ref_func_r2"] == pytest.approx(seen["ref_r2"], rel=1e-2, abs=1e-3)


def test_token_target_needs_the_response():
    with pytest.raises(ValueError, match="token_target needs response_module"):
        FourierAttentionCallback(["ln_f"], steps=[1], token_target="token")
    with pytest.raises(ValueError, match="token_pair"):
        FourierAttentionCallback(steps=[1], response_module="ln_f", response_target="count", token_pair=[1])
