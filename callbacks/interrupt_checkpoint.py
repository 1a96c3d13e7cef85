"""Checkpoint a run after its validations, when it is interrupted (SIGINT, SIGTERM) or fails: no work is lost.

``last.ckpt`` is rewritten after each validation (or, with ``every_seconds``, after the first validation that many
seconds past the last write), so a killed process resumes from it. The first
Ctrl-C (or a SIGTERM) lets the current optimizer step finish, with its validation if it has one, writes
``last.ckpt`` there and stops the run; resuming from it continues exactly. A second Ctrl-C interrupts at
once. A failure writes ``on_exception.ckpt``: the state it failed in, for inspection.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from .utils.errors import ConfigurationError, RunInterrupted

SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class InterruptCheckpoint(Checkpoint):
    """After every validation: save ``last.ckpt`` (the state a killed run resumes from). On SIGINT / SIGTERM: finish
    the step (and its validation), save ``last.ckpt`` there, stop with ``RunInterrupted``. On any other exception
    during training: save ``on_exception.ckpt``.

    A Lightning checkpoint taken before a step's validation resumes after it (Lightning skips that
    validation), so at a validation step the checkpoint is written again once the validation is done.
    As a ``Checkpoint`` it runs after the other callbacks of each hook, so their state of the step is in it.

    Args:
        dirpath: folder of the checkpoints; None: the ``ModelCheckpoint``'s folder, else ``<log_dir>/checkpoints``.
        on_exception: also checkpoint when training fails with an exception.
        every_validation: rewrite ``last.ckpt`` after validations (Lightning's ``ModelCheckpoint(save_top_k=0,
            save_last=True)`` writes it only when it saved a checkpoint of its own at that step).
        every_seconds: rewrite it only after a validation at least this many seconds (wall time) after the previous
            write or the start of training: a kill loses at most that much plus one validation interval. 0: after
            every validation. A run of small models validating every few seconds writes far less (a 10,000-step
            Dyck run: 100 rewrites of 8.6 MB at 0, about 10 at 60).

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import InterruptCheckpoint

        trainer = Trainer(callbacks=[InterruptCheckpoint()], max_steps=10_000, val_check_interval=100)
    """

    def __init__(self, dirpath: Optional[str] = None, on_exception: bool = True, every_validation: bool = True,
                 every_seconds: float = 0.0) -> None:
        if not every_seconds >= 0:
            raise ConfigurationError(f"InterruptCheckpoint(every_seconds=...) must be >= 0 (0: every validation), got {every_seconds}")
        self.dirpath = dirpath
        self.on_exception_save = on_exception
        self.every_validation = every_validation
        self.every_seconds = every_seconds
        self.received: Optional[str] = None  # "SIGINT" / "SIGTERM" once a signal asked the run to stop
        self._saved_at: Optional[int] = None  # global step of the checkpoint written for the signal
        self._written_at: Optional[int] = None  # global step of the last last.ckpt
        self._written_time = 0.0  # time.monotonic() of that write (or of the start of training)
        self._training = False  # between on_train_start and the end of fit: a failure is worth a checkpoint
        self._previous: dict[int, Any] = {}  # signal handlers to put back

    def checkpoint_dir(self, trainer: pl.Trainer) -> str:
        if self.dirpath is not None:
            return self.dirpath
        if trainer.checkpoint_callback is not None and getattr(trainer.checkpoint_callback, "dirpath", None):
            return trainer.checkpoint_callback.dirpath
        return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = SIGNALS[signum]
        rank_zero_info(f"{self.received}: stopping after this optimizer step (Ctrl-C again stops at once)")

    def _asked(self, trainer: pl.Trainer) -> bool:
        asked = self.received is not None
        if trainer.world_size > 1:  # every rank saves and stops together
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        return asked

    def _write_last(self, trainer: pl.Trainer) -> str:
        path = os.path.join(self.checkpoint_dir(trainer), "last.ckpt")
        if trainer.is_global_zero and os.path.islink(path):  # a ModelCheckpoint(save_last="link") link
            os.remove(path)
        trainer.save_checkpoint(path, weights_only=False)  # the full state; atomic: a kill mid-write keeps the previous one
        self._written_at, self._written_time = trainer.global_step, time.monotonic()
        return path

    def _save_last(self, trainer: pl.Trainer) -> str:
        """last.ckpt for a signal: the run stops once this step is done."""
        path = self._write_last(trainer)
        self._saved_at = trainer.global_step
        return path

    def _stop(self, trainer: pl.Trainer, path: str) -> None:
        raise RunInterrupted(
            f"{self.received or 'a signal on another rank'} after optimizer step {trainer.global_step}: saved {path}; "
            "resume with the same command and --ckpt_path last"
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take over SIGINT and SIGTERM (main thread only: Python delivers signals there)."""
        self.received, self._saved_at, self._written_at, self._training = None, None, None, True
        self._written_time = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._on_signal) for signum in SIGNALS}

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """A signal came: checkpoint this step now; the stop waits for the step's validation, if it has one."""
        if self._saved_at is None and self._asked(trainer):
            self._save_last(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The step's validation is done: checkpoint (a resume then skips it, rightly); after a signal, stop."""
        if trainer.sanity_checking or not self._training:  # validations of a fit only
            return
        if self._saved_at == trainer.global_step:
            self._stop(trainer, self._save_last(trainer))
        elif self.every_validation and self._due(trainer):
            self._write_last(trainer)

    def _due(self, trainer: pl.Trainer) -> bool:
        """Whether ``every_seconds`` have passed since the last write (rank 0's clock decides for every rank)."""
        due = time.monotonic() - self._written_time >= self.every_seconds
        return trainer.strategy.broadcast(due) if trainer.world_size > 1 else due

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """The signal's step had no validation: its checkpoint stands; stop before the next step."""
        if self._saved_at is not None:
            self._stop(trainer, os.path.join(self.checkpoint_dir(trainer), "last.ckpt"))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_at is not None:  # the signal came at the last step
            self._stop(trainer, os.path.join(self.checkpoint_dir(trainer), "last.ckpt"))
        if self.every_validation and self._written_at != trainer.global_step:  # the final state, to train on from
            self._write_last(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A failure (not our own stop, not a second Ctrl-C): the state it failed in, under its own name."""
        training, self._training = self._training, False
        self._release()
        if not training or not self.on_exception_save or isinstance(exception, (RunInterrupted, KeyboardInterrupt)):
            return
        path = os.path.join(self.checkpoint_dir(trainer), "on_exception.ckpt")
        trainer.save_checkpoint(path, weights_only=False)
        rank_zero_warn(f"training failed at optimizer step {trainer.global_step}; its state is in {path}")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._training = False
        self._release()

    def _release(self) -> None:
        """Give the signals back (Lightning runs no teardown hook after an exception: on_exception calls this too)."""
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)
        self._previous = {}
