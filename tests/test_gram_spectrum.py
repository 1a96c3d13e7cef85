"""GramSpectrum against the brute force of tests/oracle.py, and its public API for other callbacks."""
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from callbacks import DirectionUnavailable, EdgeDecomposer, GramSpectrum, UpdateRecorder
from oracle import CLASSES, EMBED, ADAMW, MemoryLogger, TinyAttention, assert_metrics_close, brute_for_run, make_loader
from oracle import run_fit

TWO_GROUPS_STEPLR = {
    "cls": torch.optim.AdamW,
    "kwargs": {"lr": 0.02, "weight_decay": 0.5},
    "group_a": {"lr": 0.01, "weight_decay": 1.0},
    "step_lr": 7,
}


@pytest.mark.parametrize(
    "optim,interval,manual_steps",
    [(TWO_GROUPS_STEPLR, 1, 0), (ADAMW, 3, 0), (TWO_GROUPS_STEPLR, 1, 2)],
    ids=["interval1-two-groups-steplr", "interval3", "manual-2-steps-per-batch"],
)
def test_matches_brute_force(tmp_path, optim, interval, manual_steps):
    rec = UpdateRecorder(interval=interval, window=5)
    analyses = (GramSpectrum(top_k=5), EdgeDecomposer(top_k=5))
    model, snaps, log = run_fit(tmp_path, rec, optim, steps=24, analyses=analyses, manual_steps=manual_steps)
    assert rec.rows_done == 24 // interval
    assert_metrics_close(log.by_step, brute_for_run(model, snaps, "adamw", interval, 5, 5))


class DirectionProbe(Callback):
    """Placed before GramSpectrum: asks for the directions before GramSpectrum's own hook has run."""

    def __init__(self) -> None:
        self.checked = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        spectrum, recorder = GramSpectrum.find(trainer), UpdateRecorder.find(trainer)
        if spectrum.window_size == 0:
            with pytest.raises(DirectionUnavailable, match="window has"):
                spectrum.directions([1])
            return
        x = recorder.window_rows()[0]
        w = x.shape[0]
        assert spectrum.window_size == w == min(3, recorder.rows_done)
        assert spectrum.last_step == trainer.global_step
        _, s, vt = torch.linalg.svd(x, full_matrices=False)
        torch.testing.assert_close(spectrum.sigma, s.double(), rtol=1e-8, atol=1e-12)
        v = spectrum.directions(list(range(1, w + 1)))
        assert v.shape == (w, recorder.selection.numel) and v.dtype == torch.float64
        torch.testing.assert_close((v @ vt.T).abs(), torch.eye(w, dtype=v.dtype), rtol=0, atol=1e-8)
        assert bool(((x @ v.T).sum(0) >= 0).all())  # each v_k points along the window's net motion
        with pytest.raises(DirectionUnavailable, match=f"v_{w + 1} is unavailable"):
            spectrum.directions([w + 1])
        self.checked.append(trainer.global_step)


def test_directions_are_current_whatever_the_callback_order(tmp_path):
    probe = DirectionProbe()
    run_fit(tmp_path, UpdateRecorder(window=3), steps=6, extra=(probe,), analyses=(GramSpectrum(top_k=3),))
    assert probe.checked == [2, 3, 4, 5, 6]


def test_zero_sigma_has_no_direction(tmp_path):
    frozen = {"cls": torch.optim.AdamW, "kwargs": {"lr": 0.0, "weight_decay": 0.5}}  # every update is exactly 0
    spectrum = GramSpectrum(top_k=2)
    run_fit(tmp_path, UpdateRecorder(window=2), frozen, steps=3, analyses=(spectrum,))
    assert spectrum.sigma.tolist() == [0.0, 0.0]
    with pytest.raises(DirectionUnavailable, match="σ_1 = 0"):
        spectrum.directions([1])
    assert spectrum.latest["edge/k_star"] == 1.0 and spectrum.latest["edge/gap_ratio"] == 1.0


def test_find_and_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="no GramSpectrum in trainer.callbacks"):
        GramSpectrum.find(SimpleNamespace(callbacks=[UpdateRecorder()]))
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        GramSpectrum(top_k=0)
    with pytest.raises(ValueError, match=r"GramSpectrum\(top_k=6\) exceeds UpdateRecorder\(window=5\)"):
        run_fit(tmp_path, UpdateRecorder(window=5), steps=1, analyses=(GramSpectrum(top_k=6),))


def test_logs_only_on_rank_zero():
    spectrum, log = GramSpectrum(top_k=2), MemoryLogger()
    spectrum._unpublished = [(5, {"edge/g23": 1.0})]
    assert spectrum.publish(SimpleNamespace(is_global_zero=False, loggers=[log], log_every_n_steps=1)) == [(5, {"edge/g23": 1.0})]
    assert log.by_step == {}
    spectrum._unpublished = [(6, {"edge/g23": 2.0})]
    spectrum.publish(SimpleNamespace(is_global_zero=True, loggers=[log], log_every_n_steps=1))
    assert log.by_step == {6: {"edge/g23": 2.0}}


def test_tensorboard_layout_groups_sigma_and_grad_frac(tmp_path, monkeypatch):
    logger = TensorBoardLogger(str(tmp_path))
    layouts = []
    monkeypatch.setattr(logger.experiment, "add_custom_scalars", layouts.append)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        max_steps=3,
        logger=logger,
        callbacks=[UpdateRecorder(window=3), GramSpectrum(top_k=2), EdgeDecomposer(top_k=3)],
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(TinyAttention(ADAMW), make_loader(16, 8))
    assert layouts == [
        {
            "spectral edge": {
                "sigma_k": ["Multiline", ["edge/sigma_1", "edge/sigma_2"]],
                "grad_frac_vk": ["Multiline", ["edge/grad_frac_v1", "edge/grad_frac_v2", "edge/grad_frac_v3"]],
            }
        }
    ]


def test_loggers_get_one_row_per_log_every_n_steps_and_latest_every_row(tmp_path):
    spectrum = GramSpectrum(top_k=2)
    _, _, logger = run_fit(tmp_path, UpdateRecorder(interval=1, window=3), analyses=[spectrum], steps=12,
                           log_every_n_steps=5)
    assert sorted(logger.by_step) == [1, 5, 10]  # the first row of each 5-step span
    assert sorted(s for s, m in logger.by_step.items() if "edge/sigma_1" in m) == [5, 10]  # w >= 2 from step 2
    assert spectrum.last_step == 12 and "edge/sigma_1" in spectrum.latest


class AlternateHeads(TinyAttention):
    """A two-task toy: ``head_b`` answers on odd steps only, so on even steps it gets no gradient at all."""

    def __init__(self, optim, manual_steps=0):
        super().__init__(optim, manual_steps)
        self.head_b = nn.Linear(EMBED, CLASSES).double()

    def forward(self, x):
        h = x + self.attn_a(x, x, x, need_weights=False)[0]
        h = h + self.attn_b(h, h, h, need_weights=False)[0]
        return (self.head_b if self.global_step % 2 else self.head)(torch.tanh(h).mean(1))


def test_rows_without_gradient_leave_v1_unmatched_not_a_crash(tmp_path):
    """head_b's rows alternate update / exactly 0: a window ending in a zero row has one mode fewer than the
    previous one, and when that mode is the old v₂'s partner the old v₁ has none (NaN); the run goes on."""
    sgd = {"cls": torch.optim.SGD, "kwargs": {"lr": 2.0, "weight_decay": 0.1}}
    rec = UpdateRecorder(params=["head_b.*"], interval=1, window=3)
    analyses = (GramSpectrum(top_k=3), EdgeDecomposer(top_k=3))
    model, snaps, log = run_fit(tmp_path, rec, sgd, steps=24, analyses=analyses, model_cls=AlternateHeads)
    assert rec.steps_done == 24
    assert [s["head_b.weight"] for s in snaps.stepped] == [bool(i % 2) for i in range(24)]
    assert_metrics_close(log.by_step, brute_for_run(model, snaps, "sgd", 1, 3, 3, names=["head_b.bias", "head_b.weight"]))
    rotation = [m["edge/rotation_v1_deg"] for m in log.by_step.values() if "edge/rotation_v1_deg" in m]
    assert any(math.isnan(r) for r in rotation) and any(not math.isnan(r) for r in rotation)


def test_one_window_per_recorder_and_its_checkpoint_state(tmp_path):
    """Both analyses read the recorder's one GramWindow; its state travels in each analysis's checkpoint state,
    and a state of the older per-analysis format ("gram") restores the same spectrum."""
    from callbacks import GramWindow

    rec = UpdateRecorder(interval=1, window=3)
    spectrum, decomposer = GramSpectrum(top_k=3), EdgeDecomposer(top_k=3)
    run_fit(tmp_path, rec, ADAMW, steps=7, analyses=(spectrum, decomposer))
    assert spectrum._window is decomposer._window is GramWindow.of(rec)
    assert GramWindow.of(rec).readers == [spectrum, decomposer]
    state = spectrum.state_dict()
    assert state["window"]["rows"] == 7 and state["window"]["gram"].shape == (4, 4)
    old_format = {**{k: v for k, v in state.items() if k != "window"}, "gram": state["window"]["gram"]}
    for restored_state in (state, old_format):
        fresh = GramSpectrum(top_k=3)
        fresh.load_state_dict(restored_state)
        fresh.bind(UpdateRecorder(interval=1, window=3))
        assert fresh.window_size == 3
        torch.testing.assert_close(fresh.sigma, spectrum.sigma, rtol=0, atol=0)
