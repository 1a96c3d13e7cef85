"""EdgeDecomposer (and GramSpectrum alongside it) against the brute force of tests/oracle.py.

Covers SGD with coupled decay through momentum (plain, dampened, nesterov), gradient accumulation,
and a run stopped mid-window / mid-row and resumed from its checkpoint.
"""
import glob
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder
from callbacks.functional.edge_decomposer import decompose
from oracle import ADAMW, TinyAttention, assert_metrics_close, brute_for_run, make_loader, run_fit

SGD_MOMENTUM = {"cls": torch.optim.SGD, "kwargs": {"lr": 0.3, "weight_decay": 0.05, "momentum": 0.9, "dampening": 0.2}}
SGD_NESTEROV = {
    "cls": torch.optim.SGD,
    "kwargs": {"lr": 0.3, "weight_decay": 0.05, "momentum": 0.8, "nesterov": True},
    "group_a": {"lr": 0.2, "weight_decay": 0.2},
    "step_lr": 5,
}


def _analyses(top_k):
    return (GramSpectrum(top_k=top_k), EdgeDecomposer(top_k=top_k))


@pytest.mark.parametrize(
    "optim,kind,interval,window,extra_kwargs",
    [
        (SGD_MOMENTUM, "sgd", 1, 5, {}),
        (SGD_NESTEROV, "sgd", 3, 4, {}),
        (ADAMW, "adamw", 3, 5, {"accumulate_grad_batches": 2}),
    ],
    ids=["sgd-momentum-dampening", "sgd-nesterov-groups-steplr-interval3", "adamw-accumulate2-interval3"],
)
def test_matches_brute_force(tmp_path, optim, kind, interval, window, extra_kwargs):
    top_k = min(5, window)
    rec = UpdateRecorder(interval=interval, window=window)
    model, snaps, log = run_fit(tmp_path, rec, optim, steps=24, analyses=_analyses(top_k), **extra_kwargs)
    assert rec.steps_done == len(snaps.thetas) == 24  # one recorded step per optimizer step, not per batch
    assert_metrics_close(log.by_step, brute_for_run(model, snaps, kind, interval, window, top_k))


@pytest.mark.parametrize("optim,kind", [(ADAMW, "adamw"), (SGD_MOMENTUM, "sgd")], ids=["adamw", "sgd-momentum"])
def test_resume_mid_window_continues_exactly(tmp_path, optim, kind):
    interval, window = 3, 3
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=13, save_top_k=-1)
    rec = UpdateRecorder(interval=interval, window=window)
    model, snaps, full = run_fit(tmp_path / "a", rec, optim, steps=24, analyses=_analyses(3), extra=(ckpt,), batches=1)
    assert_metrics_close(full.by_step, brute_for_run(model, snaps, kind, interval, window, 3))
    (path,) = glob.glob(str(tmp_path / "ckpt" / "*step=13*.ckpt"))  # 4 rows done, 1 step into the 5th

    rec2 = UpdateRecorder(interval=interval, window=window)
    model2, _, resumed = run_fit(tmp_path / "b", rec2, optim, 24, _analyses(3), batches=1, ckpt_path=path)
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)  # the resumed trajectory is the same run
    later = {s: m for s, m in full.by_step.items() if s > 13}
    assert sorted(resumed.by_step) == sorted(later) == [15, 18, 21, 24]
    assert_metrics_close(resumed.by_step, later, rtol=1e-10, atol=1e-14)
    for a, b in zip(rec.window_rows(), rec2.window_rows()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_decompose_matches_explicit_projections():
    g = torch.Generator().manual_seed(1)
    x_wd = torch.randn(4, 30, generator=g, dtype=torch.float64)
    x = x_wd + torch.randn(4, 30, generator=g, dtype=torch.float64)
    _, s, vt = torch.linalg.svd(x, full_matrices=False)
    u = (x @ vt.T) / s  # u_k = X v_k / σ_k
    for k in range(4):
        got = decompose(x_wd @ x.T, u[:, k], float(s[k]))
        gk, wk = (x - x_wd) @ vt[k], x_wd @ vt[k]
        assert math.isclose(got["grad_frac"], float((gk**2).mean() / ((gk**2).mean() + (wk**2).mean())), rel_tol=1e-10)
        assert math.isclose(got["alignment"], float((gk * wk).mean()), rel_tol=1e-10, abs_tol=1e-14)
        assert math.isclose(got["grad_mean"], float(gk.mean()), rel_tol=1e-10, abs_tol=1e-14)
        assert math.isclose(got["wd_mean"], float(wk.mean()), rel_tol=1e-10, abs_tol=1e-14)


def test_grad_frac_is_half_without_any_projection():
    zeros = torch.zeros(3, 3, dtype=torch.float64)
    assert decompose(zeros, zeros[0], 1.0)["grad_frac"] == 0.5


def test_zero_weight_decay_gives_all_gradient(tmp_path):
    rec = UpdateRecorder(window=3)
    optim = {"cls": torch.optim.RMSprop, "kwargs": {"lr": 0.01}}  # any optimizer is fine without decay
    run_fit(tmp_path, rec, optim, steps=6, analyses=(dec := EdgeDecomposer(top_k=3),))
    latest = dec.latest
    assert latest["update/norm_wd"] == 0.0
    assert latest["update/norm_grad"] == pytest.approx(float(rec.window_rows()[0][-1].norm()), rel=1e-12)
    assert [latest[f"edge/grad_frac_v{k}"] for k in (1, 2, 3)] == [1.0, 1.0, 1.0]


def test_decomposer_needs_a_recorder(tmp_path):
    trainer = pl.Trainer(default_root_dir=str(tmp_path), max_steps=1, logger=False, callbacks=[EdgeDecomposer()])
    with pytest.raises(ValueError, match="exactly one UpdateRecorder.*add one"):
        trainer.fit(TinyAttention(ADAMW), make_loader(8, 8))


def test_history_npz_has_every_logged_scalar(tmp_path):
    dec = EdgeDecomposer(top_k=2, history_path="hist/edge.npz")
    _, _, log = run_fit(tmp_path, UpdateRecorder(window=3), steps=5, analyses=(dec,))
    saved = np.load(tmp_path / "hist" / "edge.npz")  # relative to trainer.log_dir (= default_root_dir here)
    for name in ("edge/grad_frac_v1", "update/norm_wd"):
        want = [(s, m[name]) for s, m in sorted(log.by_step.items()) if name in m]
        np.testing.assert_allclose(saved[name], np.array(want))
    assert saved["edge/grad_frac_v1"][:, 0].tolist() == [2, 3, 4, 5]
