"""Checkpoint a run when it is interrupted (SIGINT, SIGTERM) or fails, so that no work is lost.

The first Ctrl-C (or a SIGTERM) lets the current optimizer step finish, writes ``last.ckpt`` at that step
and stops the run; resuming from it continues exactly. A second Ctrl-C interrupts at once. A failure
writes ``on_exception.ckpt``: the state when it failed, for inspection (it may lie inside a step).
"""
from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override


class InterruptCheckpoint(Callback):
    """On SIGINT / SIGTERM: finish the step, save ``last.ckpt`` there, stop. On an exception: ``on_exception.ckpt``.

    Lightning turns a SIGTERM into a stop once the current step (and its validation) is done; the first
    SIGINT is made to do the same, so both leave a checkpoint from which a resumed run continues exactly.

    Args:
        dirpath: folder of the checkpoints; None: the ``ModelCheckpoint``'s folder, else ``<log_dir>/checkpoints``.
        on_exception: also checkpoint when training fails with an exception.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.callbacks import ModelCheckpoint
        from callbacks import InterruptCheckpoint

        trainer = Trainer(callbacks=[ModelCheckpoint(every_n_train_steps=500, save_top_k=0, save_last=True),
                                     InterruptCheckpoint()], max_steps=10_000)
    """

    def __init__(self, dirpath: Optional[str] = None, on_exception: bool = True) -> None:
        self.dirpath = dirpath
        self.on_exception_save = on_exception
        self.interrupted_by: Optional[str] = None  # "SIGINT" / "SIGTERM" once a signal stopped the run
        self._previous_sigint: Any = None

    def checkpoint_dir(self, trainer: pl.Trainer) -> str:
        if self.dirpath is not None:
            return self.dirpath
        if trainer.checkpoint_callback is not None and getattr(trainer.checkpoint_callback, "dirpath", None):
            return trainer.checkpoint_callback.dirpath
        return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")

    def _on_sigint(self, signum: int, frame: Optional[FrameType]) -> None:
        sigterm_handler = signal.getsignal(signal.SIGTERM)
        if self.interrupted_by is not None or not callable(sigterm_handler):  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.interrupted_by = "SIGINT"
        rank_zero_info("Ctrl-C: stopping after this optimizer step (press again to stop at once)")
        sigterm_handler(signal.SIGTERM, frame)  # Lightning's: stop at the end of the step

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Route the first SIGINT into Lightning's SIGTERM stop (main thread only: Python delivers signals there)."""
        self.interrupted_by = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A signal's stop: ``last.ckpt`` at the finished step. A failure: the state it failed in, under its own name."""
        if trainer.state.fn != "fit":
            return
        if isinstance(exception, SIGTERMException):
            self.interrupted_by = self.interrupted_by or "SIGTERM"
            path = os.path.join(self.checkpoint_dir(trainer), "last.ckpt")
            if trainer.is_global_zero and os.path.islink(path):  # a ModelCheckpoint(save_last="link") link
                os.remove(path)
            trainer.save_checkpoint(path)
            rank_zero_warn(f"{self.interrupted_by} after optimizer step {trainer.global_step}: saved {path}; "
                           "resume with the same command and --ckpt_path last")
        elif self.on_exception_save and not isinstance(exception, KeyboardInterrupt):
            path = os.path.join(self.checkpoint_dir(trainer), "on_exception.ckpt")
            trainer.save_checkpoint(path)
            rank_zero_warn(f"training failed at optimizer step {trainer.global_step}; its state is in {path}")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_sigint is not None and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None
