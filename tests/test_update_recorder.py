"""UpdateRecorder: parameter selection, exact rows (total, decay, raw gradient) against saved θ, and errors."""
import copy
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from callbacks import ConfigurationError, DecayRule, NonFiniteError, UpdateRecorder, register_decay_rule
from callbacks.utils.decay_rules import _RULES, decoupled
from callbacks.utils.param_selection import select_parameters
from oracle import ADAMW, TinyAttention, attention_names, clipped_grads, decay_per_step, flat, make_loader, rows_of
from oracle import run_fit

ATTN = ["attn_a.in_proj_weight", "attn_a.out_proj.weight", "attn_b.in_proj_weight", "attn_b.out_proj.weight"]


def _batch(seed=0, n=8):
    return next(iter(make_loader(n, n, seed)))


def _theta(model, names):
    named = dict(model.named_parameters())
    return np.concatenate([named[n].detach().numpy().ravel() for n in names])


def _plain_steps(model, opt, steps):
    """θ_attn [steps + 1, P] before and after each of ``steps`` plain torch optimizer steps on one batch."""
    thetas, batch = [_theta(model, ATTN)], _batch()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
        thetas.append(_theta(model, ATTN))
    return np.stack(thetas)


# ---------------------------------------------------------------- selection
def test_presets_globs_and_layout():
    model = TinyAttention(ADAMW)
    model.attn_b.out_proj.weight.requires_grad_(False)  # frozen parameters are skipped
    sel = select_parameters(model, "attn_weights")
    assert sel.names == tuple(ATTN[:3])  # sorted, not registration order (attn_b is registered first)
    layout = [(b.offset, b.numel, b.shape) for b in sel.blocks]
    assert layout == [(0, 192, (24, 8)), (192, 64, (8, 8)), (256, 192, (24, 8))]
    assert sel.numel == 448
    assert select_parameters(model, "all_matrices").names == tuple(sorted(ATTN[:3] + ["head.weight"]))
    assert len(select_parameters(model, "all").names) == len([p for p in model.parameters() if p.requires_grad])
    assert select_parameters(model, ["attn_a.*bias", "head.*"]).names == (
        "attn_a.in_proj_bias", "attn_a.out_proj.bias", "head.bias", "head.weight"
    )


def test_wrapper_prefixes_are_normalized():
    """Only real wrappers lose their component (tests/test_selection_layouts.py has the rest)."""
    inner = TinyAttention(ADAMW)
    compiled = torch.compile(inner, backend="eager")  # an OptimizedModule holding _orig_mod
    ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(ddp)
    ddp.module = compiled  # names are module._orig_mod.attn_a...
    assert select_parameters(ddp, "attn_weights").names == tuple(ATTN)


def test_flat_params_roundtrip():
    model = TinyAttention(ADAMW)
    rec = UpdateRecorder()
    rec.attach(model, [torch.optim.AdamW(model.parameters())])
    vec = rec.flat_params()
    np.testing.assert_array_equal(vec.numpy(), _theta(model, ATTN))
    rec.write_flat_params(vec * 2)
    np.testing.assert_array_equal(_theta(model, ATTN), 2 * vec.numpy())
    with pytest.raises(ValueError, match="write_flat_params needs 512 values"):
        rec.write_flat_params(vec[:3])


# ---------------------------------------------------------------- exact rows
def test_rows_match_snapshots_plain_loop():
    """A plain torch loop (no Lightning): rows are exact sums of θ differences and of −η ω θ_{s−1}."""
    model = TinyAttention(ADAMW)
    opt = torch.optim.AdamW(model.parameters(), lr=0.03, weight_decay=0.7)
    rec = UpdateRecorder(interval=2, window=3)
    rec.attach(model, [opt])
    thetas = _plain_steps(model, opt, 9)
    assert (rec.steps_done, rec.rows_done) == (9, 4)
    total, wd = rec.window_rows()
    np.testing.assert_allclose(total.numpy(), rows_of(np.diff(thetas, axis=0), 2)[1:], rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(wd.numpy(), rows_of(-0.03 * 0.7 * thetas[:-1], 2)[1:], rtol=1e-10, atol=1e-15)


def test_raw_gradient_rows_are_clipped_gradients(tmp_path):
    rec = UpdateRecorder(interval=2, window=3, keep_raw_grad=True)
    model, snaps, _ = run_fit(tmp_path, rec, steps=8, gradient_clip_val=0.05)
    names = attention_names([n for n, _ in model.named_parameters()])
    thetas = np.stack([flat(t, names) for t in snaps.thetas] + [flat(snaps.final, names)])
    total, wd, raw = rec.window_rows(include_raw=True)
    np.testing.assert_allclose(total.numpy(), rows_of(np.diff(thetas, axis=0), 2)[1:], rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(wd.numpy(), rows_of(decay_per_step(snaps, names, "adamw"), 2)[1:], rtol=1e-10)
    want = rows_of(clipped_grads(snaps, names, 0.05), 2)[1:]
    np.testing.assert_allclose(raw.numpy(), want, rtol=1e-10, atol=1e-15)
    assert not np.allclose(want, rows_of(clipped_grads(snaps, names, None), 2)[1:])  # clipping was active


def test_sgd_maximize_splits_decay_the_same_way():
    model = TinyAttention(ADAMW)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.3, momentum=0.5, maximize=True)
    rec = UpdateRecorder(window=2)
    rec.attach(model, [opt])
    thetas = _plain_steps(model, opt, 3)
    buf, decay = None, []
    for th in thetas[:-1]:  # decay part of torch's momentum buffer, maximize only flips the gradient
        buf = 0.3 * th if buf is None else 0.5 * buf + 0.3 * th
        decay.append(-0.1 * buf)
    np.testing.assert_allclose(rec.window_rows()[1].numpy(), np.stack(decay)[1:], rtol=1e-10)


def test_grad_scaler_skipped_step_records_nothing():
    model = TinyAttention(ADAMW).float()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    rec = UpdateRecorder(window=3)
    rec.attach(model, [opt])
    x, y = _batch()
    thetas = [_theta(model, ATTN)]
    for step in range(4):
        opt.zero_grad()
        loss = model.loss((x.float(), y))
        scaler.scale(loss * (float("inf") if step == 1 else 1.0)).backward()
        scaler.step(opt)
        scaler.update()
        thetas.append(_theta(model, ATTN))
    np.testing.assert_array_equal(thetas[2], thetas[1])  # the scaler skipped optimizer.step
    assert (rec.steps_done, rec.rows_done) == (3, 3)
    kept = np.stack([thetas[1] - thetas[0], thetas[3] - thetas[2], thetas[4] - thetas[3]])
    np.testing.assert_allclose(rec.window_rows()[0].numpy(), kept, rtol=1e-5, atol=1e-8)


def test_no_host_sync_inside_a_row():
    """Steps that do not complete a row never read a tensor on the host."""
    model = TinyAttention(ADAMW)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1, momentum=0.9, nesterov=True)
    rec = UpdateRecorder(interval=4, window=2, keep_raw_grad=True)
    rec.attach(model, [opt])

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in the per-step path")

    batch = _batch()
    with pytest.MonkeyPatch.context() as mp:
        for _ in range(3):
            opt.zero_grad()
            model.loss(batch).backward()
            for name in ("__bool__", "item", "__float__", "__int__", "tolist", "numpy", "cpu"):
                mp.setattr(torch.Tensor, name, forbidden)
            opt.step()
            mp.undo()
    assert rec.steps_done == 3 and rec.rows_done == 0


# ---------------------------------------------------------------- lifecycle and resume bookkeeping
def test_hooks_removed_after_fit_and_after_exception(tmp_path):
    rec = UpdateRecorder(window=2)
    model, _, _ = run_fit(tmp_path, rec, steps=3)
    opt = model.trainer.optimizers[0]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks

    class Boom(TinyAttention):
        def training_step(self, batch, batch_idx):
            if self.global_step == 2:
                raise KeyError("boom")
            return super().training_step(batch, batch_idx)

    boom, rec2 = Boom(ADAMW), UpdateRecorder(window=2)
    trainer = pl.Trainer(default_root_dir=str(tmp_path), max_steps=5, logger=False, callbacks=[rec2])
    with pytest.raises(KeyError, match="boom"):
        trainer.fit(boom, make_loader(32, 8))
    assert rec2.steps_done == 2
    opt = trainer.optimizers[0]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_state_dict_continues_exactly():
    """A copy restored from state_dict (before attach, as Lightning does) continues the same rows."""
    model = TinyAttention(ADAMW)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.2, momentum=0.9, dampening=0.3)
    rec = UpdateRecorder(interval=3, window=2)
    rec.attach(model, [opt])
    batch = _batch()

    def steps(m, o, n):
        for _ in range(n):
            o.zero_grad()
            m.loss(batch).backward()
            o.step()

    steps(model, opt, 7)  # 2 rows + 1 step into the third
    model2 = copy.deepcopy(model)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, weight_decay=0.2, momentum=0.9, dampening=0.3)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict would share the buffers
    rec2 = UpdateRecorder(interval=3, window=2)
    rec2.load_state_dict(copy.deepcopy(rec.state_dict()))
    rec2.attach(model2, [opt2])
    steps(model, opt, 8)
    steps(model2, opt2, 8)
    assert (rec2.steps_done, rec2.rows_done) == (rec.steps_done, rec.rows_done) == (15, 5)
    for a, b in zip(rec.window_rows(), rec2.window_rows()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    bad = dict(rec.state_dict(), window=3)
    with pytest.raises(ValueError, match="checkpoint recorded interval=3, window=3"):
        rec2.load_state_dict(bad)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"window": 1}, ConfigurationError, "window must be an integer >= 2"),
        ({"interval": 0}, ConfigurationError, "interval must be an integer >= 1"),
        ({"params": "attention"}, ConfigurationError, "unknown parameter preset 'attention'"),
        ({"params": 3}, ConfigurationError, "params must be a preset name"),
        ({"on_nonfinite": "ignore"}, ConfigurationError, "on_nonfinite must be 'error' or 'skip'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        UpdateRecorder(**kwargs)


class _SignSGD(torch.optim.Optimizer):
    """An optimizer torch does not ship: θ ← θ(1 − ηω) − η sign(g)."""

    def __init__(self, params, lr=0.01, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * group["weight_decay"]).add_(p.grad.sign(), alpha=-group["lr"])


def test_optimizer_without_rule_is_refused_until_registered():
    model = TinyAttention(ADAMW)
    match = r"cannot split the weight decay of _SignSGD\(weight_decay=0.1\): _SignSGD has no decay rule; register"
    with pytest.raises(ConfigurationError, match=match):
        UpdateRecorder().attach(model, [_SignSGD(model.parameters(), weight_decay=0.1)])
    UpdateRecorder().attach(model, [torch.optim.Rprop(model.parameters())])  # no decay: any optimizer
    rule = DecayRule(lambda step: decoupled(step, step.group["lr"] * step.group["weight_decay"]), coupled=lambda g: False)
    register_decay_rule(_SignSGD, rule)
    try:
        opt = _SignSGD(model.parameters(), lr=0.03, weight_decay=0.7)
        rec = UpdateRecorder(interval=2, window=3)
        rec.attach(model, [opt])
        thetas = _plain_steps(model, opt, 6)
        total, wd = rec.window_rows()
        np.testing.assert_allclose(total.numpy(), rows_of(np.diff(thetas, axis=0), 2), rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(wd.numpy(), rows_of(-0.03 * 0.7 * thetas[:-1], 2), rtol=1e-10, atol=1e-15)
    finally:
        _RULES.pop(_SignSGD)


def test_selection_errors():
    model = TinyAttention(ADAMW)
    with pytest.raises(ValueError, match=r"params=\['nothing\*'\] matches no trainable parameter"):
        UpdateRecorder(params=["nothing*"]).attach(model, [torch.optim.AdamW(model.parameters())])
    with pytest.raises(ValueError, match="'attn_a.in_proj_weight' is in no optimizer"):
        UpdateRecorder().attach(model, [torch.optim.AdamW(model.head.parameters())])
    two = [torch.optim.AdamW(model.attn_a.parameters()), torch.optim.AdamW(model.attn_b.parameters())]
    with pytest.raises(ValueError, match="span several optimizers"):
        UpdateRecorder().attach(model, two)


def _blow_up_at(model, opt, rec, bad_step, steps):
    """Train ``steps`` steps, step ``bad_step`` with an infinite gradient entry; the selected θ before and after each step."""
    batch, thetas = _batch(), [rec.flat_params()]
    for step in range(1, steps + 1):
        opt.zero_grad()
        model.loss(batch).backward()
        if step == bad_step:
            model.attn_a.out_proj.weight.grad[0, 0] = float("inf")
            saved = rec.flat_params()
        opt.step()
        if step == bad_step:
            rec.write_flat_params(saved)  # θ finite again: only step bad_step is non-finite
        thetas.append(rec.flat_params())
    return thetas


def test_nonfinite_update_error():
    model = TinyAttention(ADAMW)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = UpdateRecorder(window=2)
    rec.attach(model, [opt])
    match = "non-finite update of parameter 'attn_a.out_proj.weight' at optimizer step 3: lower the learning rate"
    with pytest.raises(NonFiniteError, match=match) as caught:
        _blow_up_at(model, opt, rec, 3, 5)
    assert isinstance(caught.value, FloatingPointError)  # callers catching the builtin keep working


def test_nonfinite_update_skip_counts_and_warns():
    model = TinyAttention(ADAMW)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = UpdateRecorder(window=2, on_nonfinite="skip")
    rec.attach(model, [opt])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _blow_up_at(model, opt, rec, 3, 6)
    assert [str(w.message).split(";")[0] for w in caught] == [
        "UpdateRecorder dropped a non-finite row (parameter 'attn_a.out_proj.weight', optimizer step 3)",
    ]
    assert (rec.steps_done, rec.rows_done, rec.rows_skipped) == (6, 5, 1)
    assert torch.isfinite(rec.window_rows()[0]).all()


def test_rows_after_a_skipped_row_are_the_last_good_steps():
    """The ring slot a skipped row was summed in is summed into again from scratch by the next row (step 6 here)."""
    model = TinyAttention(ADAMW)
    lr, wd = 0.1, 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)  # no momentum: decay −η ω θ_{s−1}
    rec = UpdateRecorder(window=2, on_nonfinite="skip")
    rec.attach(model, [opt])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thetas = _blow_up_at(model, opt, rec, 5, 6)
    assert (rec.rows_done, rec.rows_skipped) == (5, 1)
    total, decay = rec.window_rows()
    torch.testing.assert_close(total, torch.stack([thetas[4] - thetas[3], thetas[6] - thetas[5]]), rtol=0, atol=0)
    torch.testing.assert_close(decay, -lr * wd * torch.stack([thetas[3], thetas[5]]), rtol=1e-6, atol=0)
