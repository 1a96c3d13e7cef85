"""Interrupted lit-grok runs: a checkpoint at the step a signal stopped them, and a resumed run that is the same run."""
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_grok.cli import main
from lit_grok.report import read_scalars, value_at

CONFIG_DIR = Path(__file__).parents[1] / "configs"
DYCK = ["--config", str(CONFIG_DIR / "dyck.yaml")]
# The full model and training set; a 500-sequence test set keeps each evaluation short.
FAST = ["--data.init_args.n_total=550", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


class SignalAt(Callback):
    """Sends this process ``signum`` after optimizer step ``step``, as a user's Ctrl-C (or a scheduler) would."""

    def __init__(self, step: int, signum: int = int(signal.SIGINT)) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class Killed(Exception):
    """What a killed process leaves: nothing written after the moment it died."""


class DieAt(Callback):
    """Ends the run abruptly after optimizer step ``step`` (no checkpoint callback saves for it), as ``kill -9`` would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed after step {self.step}")


def die_at(step):
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"{__name__}.DieAt", "init_args": {"step": step}})


def signal_at(step, signum):
    return "--trainer.callbacks+=" + json.dumps(
        {"class_path": f"{__name__}.SignalAt", "init_args": {"step": step, "signum": int(signum)}}
    )


def assert_same_scalars(whole, resumed, first_step):
    """Every scalar the resumed run logged from ``first_step`` on equals the uninterrupted run's, bit for bit."""
    assert set(resumed) == set(whole)
    for tag, (steps, values) in whole.items():
        r_steps, r_values = resumed[tag]
        np.testing.assert_array_equal(r_steps, steps, err_msg=tag)
        np.testing.assert_array_equal(r_values, values, err_msg=tag)
    assert max(steps.max() for steps, _ in whole.values()) > first_step


@pytest.mark.parametrize(("signum", "stop", "end"), [(signal.SIGINT, 300, 500), (signal.SIGTERM, 130, 200)],
                         ids=["SIGINT-at-a-validation-step", "SIGTERM-between-validations"])
def test_a_signal_checkpoints_that_step_and_the_resumed_run_is_the_same_run(tmp_path, monkeypatch, signum, stop, end):
    monkeypatch.chdir(tmp_path)
    # rows of 40 steps: the stop falls inside a row (280..320, 120..160) and inside a Gram window
    common = [*DYCK, f"--trainer.max_steps={end}", "--callbacks.recorder.interval=40", *FAST]
    main(["fit", *common, "--trainer.logger.init_args.name=whole"])

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *common, "--trainer.logger.init_args.name=cut", signal_at(stop, signum)])
    assert stopped.value.code == 130
    checkpoint = tmp_path / "logs" / "cut" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == stop
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back

    main(["fit", *common, "--trainer.logger.init_args.name=cut", "--ckpt_path=last"])
    assert not (tmp_path / "logs" / "cut" / "version_1").exists()  # resumed in its own folder
    whole = read_scalars(tmp_path / "logs" / "whole" / "version_0")
    assert "edge/grad_frac_v1" in whole and "val/acc" in whole
    assert_same_scalars(whole, read_scalars(checkpoint.parents[1]), first_step=stop)


def test_a_killed_run_resumes_from_its_last_validation_and_is_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [*DYCK, "--trainer.max_steps=300", "--callbacks.recorder.interval=40", "--callbacks.interrupt.every_seconds=0", *FAST]
    main(["fit", *common, "--trainer.logger.init_args.name=whole"])
    assert torch.load(tmp_path / "logs" / "whole" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 300
    with pytest.raises(Killed):
        main(["fit", *common, "--trainer.logger.init_args.name=cut", die_at(250)])
    checkpoint = tmp_path / "logs" / "cut" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 200  # the validation before the kill
    main(["fit", *common, "--trainer.logger.init_args.name=cut", "--ckpt_path=last"])
    whole = read_scalars(tmp_path / "logs" / "whole" / "version_0")
    assert_same_scalars(whole, read_scalars(checkpoint.parents[1]), first_step=200)


def test_the_intervention_resumed_from_step_1000_switches_its_decay_off(tmp_path, monkeypatch):
    """The README's protocol: a Dyck run's step-1000 checkpoint, resumed with ω′ = 0 from step 1000 on."""
    monkeypatch.chdir(tmp_path)
    main(["fit", *DYCK, "--trainer.max_steps=1000", *FAST])
    step_1000 = tmp_path / "logs" / "dyck" / "version_0" / "checkpoints" / "epoch=0-step=1000.ckpt"
    no_analyses = [f"--callbacks.{name}=null" for name in ("probes", "probes_raw", "fourier")]
    main(["fit", *DYCK, "--config", str(CONFIG_DIR / "dyck_wd_after1000.yaml"), "--trainer.max_steps=1100",
          *no_analyses, *FAST, f"--ckpt_path={step_1000}"])
    scalars = read_scalars(tmp_path / "logs" / "dyck_wd_after1000_0" / "version_0")
    assert value_at(scalars, "wd/group0", 1000) == 0.0
    assert value_at(scalars, "update/norm_wd", 1100) == 0.0  # the first row after the switch
    before = read_scalars(tmp_path / "logs" / "dyck" / "version_0")
    assert value_at(before, "update/norm_wd", 1000) > 0.5


class Tick(Callback):
    """A clock that advances one second per optimizer step (what ``InterruptCheckpoint`` reads as wall time)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def on_train_batch_end(self, trainer, *args) -> None:
        self.now += 1.0


def test_every_seconds_rewrites_last_ckpt_after_the_first_validation_that_late_and_at_the_end(tmp_path, monkeypatch):
    import lightning.pytorch as pl

    import callbacks.interrupt_checkpoint as module
    from callbacks import ConfigurationError, InterruptCheckpoint
    from lit_grok.data.dyck import DyckDataModule
    from lit_grok.models.dyck import DyckTransformer

    clock, written = Tick(), []
    monkeypatch.setattr(module, "time", clock)
    write = InterruptCheckpoint._write_last
    monkeypatch.setattr(InterruptCheckpoint, "_write_last", lambda self, trainer: written.append(trainer.global_step) or write(self, trainer))
    trainer = pl.Trainer(max_steps=70, val_check_interval=10, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                         logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[clock, InterruptCheckpoint(dirpath=str(tmp_path), every_seconds=25)])
    trainer.fit(DyckTransformer(), DyckDataModule(n_total=550))
    assert written == [30, 60, 70]  # 30 s after the start, 30 s after that, and the final state
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 70
    with pytest.raises(ConfigurationError, match="every_seconds"):
        InterruptCheckpoint(every_seconds=-1)
