"""RunSchedule: input checks, exact firing steps (explicit and grok-relative), resume state."""
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.grok_detector import GrokDetector
from callbacks import ConfigurationError
from callbacks.utils.schedule import RunSchedule


def fake_trainer(step, grok_step=None, detector=True):
    """What RunSchedule reads from a trainer: the step and a GrokDetector among the callbacks."""
    callbacks = []
    if detector:
        callbacks.append(GrokDetector())
        callbacks[0].grok_step = grok_step
    return SimpleNamespace(global_step=step, callbacks=callbacks)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(), ValueError, "the schedule is empty"),
        (dict(steps=[0]), ValueError, "steps must be >= 1"),
        (dict(after_grok=[-1]), ValueError, "after_grok must be >= 0"),
        (dict(steps=[5, 5]), ValueError, "duplicates"),
        (dict(after_grok=[3, 3]), ValueError, "duplicates"),
        (dict(steps=[1.5]), ConfigurationError, "must be integers"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        RunSchedule(**kwargs)


def test_step_in_the_past_at_start():
    schedule = RunSchedule(steps=[5, 20])
    with pytest.raises(ValueError, match="a schedule step in the past"):
        schedule.start(fake_trainer(10))
    schedule.mark_done(["step_5"])  # restored from a checkpoint: no longer in the past
    schedule.start(fake_trainer(10))
    RunSchedule(steps=[10]).start(fake_trainer(10))  # equal is fine: it runs before the next step


def test_grok_offset_in_the_past_and_missing_detector():
    with pytest.raises(ValueError, match="a schedule step in the past"):
        RunSchedule(after_grok=[0]).start(fake_trainer(10, grok_step=4))
    with pytest.raises(ValueError, match="no GrokDetector"):
        RunSchedule(after_grok=[0]).start(fake_trainer(0, detector=False))


def test_due_labels_and_done():
    schedule = RunSchedule(steps=[3, 7], after_grok=[0, 4])
    trainer = fake_trainer(0)
    schedule.start(trainer)
    seen = {}
    for step in range(12):
        trainer.global_step = step
        trainer.callbacks[0].grok_step = 3 if step >= 3 else None  # grok seen at step 3
        labels = schedule.due(trainer)
        if labels:
            seen[step] = labels
            schedule.mark_done(labels)
        assert schedule.due(trainer) == []  # done labels never come back
    assert seen == {3: ["step_3", "grok+0"], 7: ["step_7", "grok+4"]}
    assert schedule.state_dict() == {"done": ["grok+0", "grok+4", "step_3", "step_7"]}
    restored = RunSchedule(steps=[3, 7], after_grok=[0, 4])
    restored.load_state_dict(schedule.state_dict())
    assert restored.done == schedule.done


def test_grok_target_known_too_late_warns_and_is_skipped():
    schedule = RunSchedule(after_grok=[0])
    trainer = fake_trainer(9, grok_step=None)
    schedule.start(trainer)
    trainer.callbacks[0].grok_step = 5
    with pytest.warns(UserWarning, match="grok\\+0 .* skipped"):
        assert schedule.due(trainer) == []


class Regression(pl.LightningModule):
    """y = 2x fitted by SGD; logs a fake val/acc that crosses 0.5 at step 6."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.lin(x) - y) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", min(1.0, self.global_step / 12))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Probe(pl.Callback):
    """Runs its schedule at batch end and batch start, as the analysis callbacks do; records weights."""

    def __init__(self, schedule):
        self.schedule, self.fired, self.after_step = schedule, [], {}

    def on_train_start(self, trainer, pl_module):
        self.schedule.start(trainer)

    def _check(self, trainer, pl_module, hook):
        labels = self.schedule.due(trainer)
        if labels:
            self.fired.append((hook, trainer.global_step, labels, pl_module.lin.weight.detach().clone()))
            self.schedule.mark_done(labels)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._check(trainer, pl_module, "start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step[trainer.global_step] = pl_module.lin.weight.detach().clone()
        self._check(trainer, pl_module, "end")

    def on_train_end(self, trainer, pl_module):
        self._check(trainer, pl_module, "train_end")
        self.schedule.finish()


def fit_probe(schedule, max_steps):
    torch.manual_seed(0)
    x = torch.randn(64, 1)
    data = DataLoader(TensorDataset(x, 2 * x), batch_size=4)
    probe = Probe(schedule)
    trainer = pl.Trainer(
        max_steps=max_steps, val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=1,
        num_sanity_val_steps=0, callbacks=[probe, GrokDetector(threshold=0.5)],
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )
    trainer.fit(Regression(), data, data)
    assert GrokDetector.find(trainer).grok_step == 6
    for _, step, _, weight in probe.fired:
        assert torch.equal(weight, probe.after_step[step])  # every run saw the weights after its target step
    return [(hook, step, labels) for hook, step, labels, _ in probe.fired]


def test_runs_exactly_at_targets_in_a_real_fit():
    fired = fit_probe(RunSchedule(steps=[2, 5], after_grok=[0, 3]), max_steps=14)
    # grok is seen by the validation after step 6, so grok+0 runs at the next batch start, still on step-6 weights
    assert fired == [("end", 2, ["step_2"]), ("end", 5, ["step_5"]), ("start", 6, ["grok+0"]), ("end", 9, ["grok+3"])]


def test_grok_at_the_last_step_runs_at_train_end_and_unrun_labels_warn():
    with pytest.warns(UserWarning, match=r"\['step_9', 'grok\+1'\] never happened: training ended first"):
        fired = fit_probe(RunSchedule(steps=[2, 9], after_grok=[0, 1]), max_steps=6)
    assert fired == [("end", 2, ["step_2"]), ("train_end", 6, ["grok+0"])]


def test_finish_says_when_grokking_was_not_detected():
    schedule = RunSchedule(after_grok=[0])
    schedule.start(fake_trainer(0))
    with pytest.warns(UserWarning, match="never happened: training ended first \\(grokking was not detected\\)"):
        assert schedule.finish() == ["grok+0"]
