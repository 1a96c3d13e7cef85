"""The recorder books the decay of the lr / ω in force at each step, read from the optimizer's live param groups.

Lightning restores the optimizer state after the recorder attached (and ``optimizer.load_state_dict``
replaces the group dicts), so a resumed run must still log what the uninterrupted run logs.
"""
import copy

import numpy as np
import pytest
import torch

from callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder, WeightDecaySchedule
from oracle import ADAMW, TinyAttention, assert_metrics_close, brute_for_run, make_loader, rows_of, run_fit

INTERVAL, WINDOW, TOP_K = 2, 3, 3
STEPS = 16
MID_ROW, ROW_END = 7, 6  # the first run stops 1 step into row 4, or as row 3 completes (the window full)
ADAMW_STEPLR = {
    "cls": torch.optim.AdamW,
    "kwargs": {"lr": 0.02, "weight_decay": 0.5},
    "group_a": {"lr": 0.01, "weight_decay": 1.0},
    "step_lr": 3,
}
SGD_NESTEROV_COSINE = {
    "cls": torch.optim.SGD,
    "kwargs": {"lr": 0.3, "weight_decay": 0.05, "momentum": 0.8, "nesterov": True},
    "group_a": {"lr": 0.2, "weight_decay": 0.2},
    "cosine_lr": STEPS,
}
ATTN = ["attn_a.in_proj_weight", "attn_a.out_proj.weight", "attn_b.in_proj_weight", "attn_b.out_proj.weight"]


def _fit(root, optim, steps, ckpt_path=None):
    """batches=1: every step sees the same batch, wherever the run resumes. Group a stops decaying at step 10."""
    rec = UpdateRecorder(interval=INTERVAL, window=WINDOW)
    schedule = WeightDecaySchedule({10: 0.0}, param_groups=[0])
    analyses = (GramSpectrum(top_k=TOP_K), EdgeDecomposer(top_k=TOP_K))
    return run_fit(root, rec, optim, steps, analyses, extra=(schedule,), batches=1, ckpt_path=ckpt_path)


def _edge(by_step):
    """The recorder's scalars (drops the schedule's wd/group0)."""
    return {s: {k: v for k, v in m.items() if not k.startswith("wd/")} for s, m in by_step.items()}


@pytest.mark.parametrize("stop", [MID_ROW, ROW_END], ids=["mid-row", "row-end"])
@pytest.mark.parametrize(
    "optim,kind", [(ADAMW_STEPLR, "adamw"), (SGD_NESTEROV_COSINE, "sgd")], ids=["adamw-steplr", "sgd-nesterov-cosine"]
)
def test_resumed_run_logs_the_uninterrupted_run(tmp_path, optim, kind, stop):
    model, snaps, full = _fit(tmp_path / "full", optim, STEPS)
    want = brute_for_run(model, snaps, kind, INTERVAL, WINDOW, TOP_K)
    assert_metrics_close(_edge(full.by_step), want, rtol=1e-6)
    lrs = {h["attn_a.in_proj_weight"]["lr"] for h in snaps.hyper}
    assert len(lrs) > 3  # the schedule moved the lr

    first, _, _ = _fit(tmp_path / "first", optim, stop)
    path = str(tmp_path / "stop.ckpt")
    first.trainer.save_checkpoint(path)
    state = next(v for k, v in torch.load(path, weights_only=False)["callbacks"].items() if k.startswith("UpdateRecorder"))
    partial = [state[k] for k in ("neg_row_start", "acc_wd")]
    assert all(t is None for t in partial) if stop == ROW_END else all(t is not None for t in partial)  # kept mid-row only
    _, _, resumed = _fit(tmp_path / "resumed", optim, STEPS, ckpt_path=path)
    later = {s: m for s, m in full.by_step.items() if s > stop}
    assert sorted(resumed.by_step) == sorted(later) == [8, 10, 12, 14, 16]
    assert resumed.by_step[10]["wd/group0"] == 0.0
    assert_metrics_close(resumed.by_step, later, rtol=1e-6)
    assert_metrics_close(_edge(resumed.by_step), {s: want[s] for s in later}, rtol=1e-6)


def _theta(model):
    named = dict(model.named_parameters())
    return np.concatenate([named[n].detach().numpy().ravel() for n in ATTN])


def test_load_state_dict_then_new_decay_is_followed():
    """A plain loop: ``load_state_dict`` replaces the group dicts, then lr and ω change in the new ones."""
    model = TinyAttention(ADAMW)
    opt = torch.optim.AdamW(model.parameters(), lr=0.03, weight_decay=0.7)
    rec = UpdateRecorder(interval=1, window=4)
    rec.attach(model, [opt])
    batch = next(iter(make_loader(8, 8)))
    thetas, decay = [_theta(model)], []
    for step in range(4):
        if step == 2:
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))
            opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"] = 0.01, 0.2
        lr, wd = opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]
        decay.append(-lr * wd * thetas[-1])
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
        thetas.append(_theta(model))
    total, wd_rows = rec.window_rows()
    np.testing.assert_allclose(total.numpy(), rows_of(np.diff(thetas, axis=0), 1), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(wd_rows.numpy(), np.stack(decay), rtol=1e-10, atol=1e-15)
