"""The recorder's cheap paths give the brute force's rows: telescoped Δθ (one snapshot per row), decoupled decay
as one multi-tensor axpy, all row products in one float64 pass; and they keep no P-sized buffer they do not need."""
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder
from callbacks.utils.row_analysis import ROW_CHUNK, FlatPieces, inner64, row_inner64
from oracle import TinyAttention, assert_metrics_close, attention_names, brute_for_run, decay_per_step, flat, rows_of
from oracle import run_fit

INTERVAL, WINDOW = 3, 3
SCHEDULED = {  # two param groups, a per-step LR schedule
    "cls": torch.optim.AdamW,
    "kwargs": {"lr": 0.02, "weight_decay": 0.5},
    "group_a": {"lr": 0.01, "weight_decay": 1.0},
    "step_lr": 4,
}


class DecayChange(pl.Callback):
    """Sets group 0's weight decay to 0.2 after optimizer step 4 (step 5 is the middle step of row 2)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 4:
            trainer.optimizers[0].param_groups[0]["weight_decay"] = 0.2


def test_telescoped_rows_match_per_step_brute_force(tmp_path):
    rec = UpdateRecorder(interval=INTERVAL, window=WINDOW)
    analyses = (GramSpectrum(top_k=WINDOW), EdgeDecomposer(top_k=WINDOW))
    model, snaps, log = run_fit(tmp_path, rec, SCHEDULED, steps=15, analyses=analyses, extra=(DecayChange(),))
    hyper = [h["attn_a.in_proj_weight"] for h in snaps.hyper]
    assert [h["weight_decay"] for h in hyper[3:6]] == [1.0, 0.2, 0.2]  # changed inside the row of steps 4..6
    assert len({h["lr"] for h in hyper}) > 2  # the schedule moved the lr
    names = attention_names([n for n, _ in model.named_parameters()])
    thetas = np.stack([flat(t, names) for t in snaps.thetas] + [flat(snaps.final, names)])
    total, wd = (t.numpy() for t in rec.window_rows())
    np.testing.assert_allclose(total, rows_of(np.diff(thetas, axis=0), INTERVAL)[-WINDOW:], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(wd, rows_of(decay_per_step(snaps, names, "adamw"), INTERVAL)[-WINDOW:], rtol=1e-6)
    assert rec._prev is None  # decoupled decay keeps no θ_{s−1}
    assert_metrics_close(log.by_step, brute_for_run(model, snaps, "adamw", INTERVAL, WINDOW, WINDOW), rtol=1e-6)


def test_buffers_are_two_per_row_of_the_window():
    """AdamW: the rows being summed and the ring, 2W + 2 copies of the selection; a coupled rule adds θ_{s−1}."""
    for cls, kwargs, copies in ((torch.optim.AdamW, {}, 2 * WINDOW + 2), (torch.optim.Adam, {"weight_decay": 0.1}, None)):
        model = TinyAttention({})
        opt = cls(model.parameters(), lr=0.01, **kwargs)
        rec = UpdateRecorder(interval=2, window=WINDOW)
        rec.attach(model, [opt])
        x = torch.randn(4, 5, 8, dtype=torch.float64)
        for _ in range(3):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in vars(rec).values() if isinstance(t, torch.Tensor)}
        numel = sum(st.nbytes() for st in storages.values()) / (rec._ring_total.element_size() * rec.selection.numel)
        if copies is not None:
            assert numel == copies
        else:  # coupled Adam: + θ_{s−1} and the shadow first moment
            assert numel == 2 * WINDOW + 4 and rec._prev is not None


@pytest.mark.parametrize("pairs", [
    [("ring_total", "total"), ("ring_total", "theta"), ("ring_wd", "total"), ("total", "total"), ("wd", "total"),
     ("theta", "theta"), ("wd", "wd"), ("total", "theta")],  # vector products read off ring products at the slot
    [("total", "total"), ("wd", "theta"), ("theta", "wd")],  # no ring read whole: vector dots only
])
def test_one_pass_products_equal_inner64(pairs):
    torch.manual_seed(0)
    n, slot = 2 * ROW_CHUNK + 123, 2  # blocks of ROW_CHUNK and a partial one
    rings = {"ring_total": torch.randn(4, n) + 2.0, "ring_wd": torch.randn(4, n) * 1e-3}
    vectors = {"total": rings["ring_total"][slot], "wd": rings["ring_wd"][slot], "theta": torch.randn(n)}
    pieces = FlatPieces(list(vectors["theta"].split([5, ROW_CHUNK - 3, 1, ROW_CHUNK + 10, 110])))  # θ by parameter
    for theta in (vectors["theta"], pieces):
        got = row_inner64(rings, slot, theta, pairs)
        for a, b in pairs:
            left = {**rings, **vectors}[a]
            want = inner64(left, vectors[b])
            # each side's float64 sum of n products errs by at most n·2⁻⁵³·‖a‖‖b‖ (Higham); float32 sums would be ~10⁷× off
            scale = float(left.double().norm(dim=-1).max() * vectors[b].double().norm())
            torch.testing.assert_close(got[(a, b)], want, rtol=0, atol=2 * n * 2**-53 * scale)
            assert not torch.equal(got[(a, b)], torch.zeros_like(want))


@pytest.mark.parametrize("sizes, size", [([27, 3, 17, 33], 16), ([5, 1, 1, 40], 8), ([16, 16], 16), ([7], 30), ([2, 9, 4], 3)])
def test_pieces_split_like_the_concatenation(sizes, size):
    flat = torch.arange(float(sum(sizes)))
    got = FlatPieces(list(flat.split(sizes))).split(size)
    want = flat.split(size)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


class _NoClosureCall(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # ignores the closure
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])


def test_optimizer_that_skips_its_closure_is_reported():
    module = nn.Linear(3, 2)
    opt = _NoClosureCall(module.parameters(), lr=0.1)
    rec = UpdateRecorder(params="all", window=2)
    rec.attach(module, [opt])
    module(torch.randn(2, 3)).sum().backward()
    with pytest.raises(RuntimeError, match=r"returned without calling its closure"):
        opt.step(lambda: None)
