"""Parameters stored in bf16 / fp16: the decay part is what the optimizer's rounded ``p.mul_(1 − ηω)`` applied.

The brute force replays that op on the saved bf16 θ; with a zero gradient Adam's step is exactly 0, so the
whole update is the applied decay and must equal the decay part bit for bit.
"""
import numpy as np
import pytest
import torch

from callbacks import EdgeDecomposer, UpdateRecorder, WeightDecaySchedule
from callbacks import ConfigurationError
from oracle import ADAMW, TinyAttention, attention_names, flat, make_loader, rows_of, run_fit


def _replayed_decay(snaps, names, dtype=torch.bfloat16):
    """[N, P] fl(θ_{s−1}·(1 − ηω)) − θ_{s−1}, computed in the parameters' dtype as torch's AdamW does."""
    out = []
    for theta, hyper in zip(snaps.thetas, snaps.hyper):
        parts = []
        for n in names:
            h, th = hyper[n], torch.from_numpy(theta[n].ravel()).to(dtype)
            parts.append((th.clone().mul_(1 - h["lr"] * h["weight_decay"]).double() - th.double()).numpy())
        out.append(np.concatenate(parts))
    return np.stack(out)


def _bf16_fit(tmp_path, lr, wd, interval=1):
    adamw = {"cls": torch.optim.AdamW, "kwargs": {"lr": lr, "weight_decay": wd}}
    rec, dec = UpdateRecorder(interval=interval, window=3), EdgeDecomposer(top_k=3)
    model, snaps, log = run_fit(tmp_path, rec, adamw, steps=8, analyses=(dec,), precision="bf16-true")
    assert rec.selection.dtype == torch.bfloat16 and len(snaps.thetas) == 8
    names = attention_names([n for n, _ in model.named_parameters()])
    thetas = np.stack([flat(t, names) for t in snaps.thetas] + [flat(snaps.final, names)])
    return rec, log, snaps, names, thetas


def test_decay_below_bf16_resolution_is_not_booked(tmp_path):
    """ηω = 10⁻³ < 2⁻⁹: θ·(1 − ηω) rounds back to θ in bf16, so no decay happened and grad% is 1."""
    rec, log, snaps, names, thetas = _bf16_fit(tmp_path, lr=0.01, wd=0.1)
    assert not _replayed_decay(snaps, names).any()  # the premise: the optimizer's decay op is the identity
    total, wd = rec.window_rows()
    np.testing.assert_array_equal(total.numpy(), np.diff(thetas, axis=0)[-3:])
    assert total.abs().sum() > 0 and not wd.any()
    fracs = [v for m in log.by_step.values() for k, v in m.items() if k.startswith("edge/grad_frac_v")]
    assert len(fracs) == 2 + 3 * 6 and set(fracs) == {1.0}  # v₁, v₂ at step 2, then v₁..v₃
    assert {m["update/norm_wd"] for m in log.by_step.values()} == {0.0}


def test_representable_decay_equals_the_replayed_op(tmp_path):
    """ηω = 10⁻²: the decay part is the rounded op's effect, not the formula −ηωθ."""
    rec, _, snaps, names, thetas = _bf16_fit(tmp_path, lr=0.02, wd=0.5, interval=2)
    total, wd = rec.window_rows()
    want = rows_of(_replayed_decay(snaps, names), 2)[-3:]
    np.testing.assert_allclose(total.numpy(), rows_of(np.diff(thetas, axis=0), 2)[-3:], rtol=1e-6, atol=0)
    np.testing.assert_allclose(wd.numpy(), want, rtol=1e-6, atol=0)
    formula = rows_of(-0.02 * 0.5 * thetas[:-1], 2)[-3:]
    assert np.abs(formula - want).max() > 1e-2 * np.abs(want).max()  # the formula would book another decay


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_zero_gradient_update_is_all_applied_decay(dtype):
    """Adam's step is exactly 0 for a zero gradient: θ_s − θ_{s−1} is the decay the optimizer applied."""
    model = TinyAttention(ADAMW).to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=0.03, weight_decay=0.7, eps=1e-3)  # 1e-8 is 0 in fp16
    rec = UpdateRecorder(interval=1, window=3)
    rec.attach(model, [opt])
    for step in range(3):
        if step == 2:
            opt.param_groups[0]["weight_decay"] = 0.003  # ηω = 9·10⁻⁵ < 2⁻¹²: below both dtypes' resolution
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    total, wd = rec.window_rows()
    torch.testing.assert_close(wd, total, rtol=0, atol=0)
    assert (total[:2] != 0).any() and not total[2].any()


def _bf16_model_and_sgd(**kwargs):
    model = TinyAttention(ADAMW).to(torch.bfloat16)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, **kwargs)


def test_low_precision_decay_that_cannot_be_measured_is_refused(tmp_path):
    model, sgd = _bf16_model_and_sgd(weight_decay=0.1, momentum=0.9)
    match = r"SGD\(weight_decay=0.1\) on bfloat16 parameters \(precision='bf16-true'\).*precision='bf16-mixed'"
    with pytest.raises(ConfigurationError, match=match):
        UpdateRecorder().attach(model, [sgd])
    fused = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1, fused=True)
    with pytest.raises(ConfigurationError, match=r"fused AdamW.*bfloat16 parameters.*fused=False"):
        UpdateRecorder().attach(model, [fused])
    fp16 = TinyAttention(ADAMW).to(torch.float16)
    with pytest.raises(ConfigurationError, match=r"float16 parameters \(precision='16-true'\)"):
        UpdateRecorder().attach(fp16, [torch.optim.SGD(fp16.parameters(), lr=0.1, weight_decay=0.1)])

    model, sgd = _bf16_model_and_sgd(momentum=0.9)  # no decay: nothing to split
    rec = UpdateRecorder()
    rec.attach(model, [sgd])
    batch = next(iter(make_loader(8, 8)))
    x, y = batch
    model.loss((x.to(torch.bfloat16), y)).backward()
    sgd.step()
    sgd.param_groups[0]["weight_decay"] = 0.1  # switched on later, e.g. by a WeightDecaySchedule
    with pytest.raises(ConfigurationError, match=r"SGD\(weight_decay=0.1\) on bfloat16"):
        sgd.step()
    assert rec.steps_done == 1

    schedule = WeightDecaySchedule({2: 0.1})
    sgd_bf16 = {"cls": torch.optim.SGD, "kwargs": {"lr": 0.1}}
    with pytest.raises(ConfigurationError, match=r"SGD\(weight_decay=0.1\) on bfloat16"):
        run_fit(tmp_path, UpdateRecorder(), sgd_bf16, steps=4, extra=(schedule,), precision="bf16-true")
