"""The grok step: the first validation at which a monitored accuracy reaches a threshold.

Logged once as the scalar ``grok/step`` (value = step, at that step); analysis callbacks schedule
phases relative to it through ``GrokDetector.find(trainer).grok_step``.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from .utils.errors import ConfigurationError
from .utils.protocols import GrokStepSource
from .utils.trainer import find


class GrokDetector(Callback, GrokStepSource):
    """Watch ``monitor`` after every validation; record the first step where it is >= ``threshold``.

    Args:
        monitor: logged validation metric, e.g. ``val/acc`` (Dyck) or ``val/seq_acc`` (SCAN).
        threshold: accuracy that counts as grokked, in (0, 1].

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import GrokDetector

        detector = GrokDetector(monitor="val/acc", threshold=0.95)
        trainer = Trainer(callbacks=[detector], val_check_interval=100)
        # after trainer.fit(model): detector.grok_step (None if the run never grokked)
    """

    def __init__(self, monitor: str = "val/acc", threshold: float = 0.95) -> None:
        if not 0 < threshold <= 1:
            raise ConfigurationError(f"GrokDetector threshold must lie in (0, 1], got {threshold}")
        self.monitor = monitor
        self.threshold = threshold
        self.grok_step: int | None = None

    @staticmethod
    def find(trainer: pl.Trainer) -> "GrokDetector":
        """The trainer's one GrokDetector (a ConfigurationError if it has none or several)."""
        return find(trainer, GrokDetector, "add callbacks.GrokDetector(monitor=..., threshold=...) to them")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the first validation at which the monitored metric reaches the threshold."""
        if trainer.sanity_checking or self.grok_step is not None:
            return
        if self.monitor not in trainer.callback_metrics:
            raise ConfigurationError(
                f"GrokDetector monitors {self.monitor!r}, which was not logged; logged: {sorted(trainer.callback_metrics)}"
            )
        if float(trainer.callback_metrics[self.monitor]) >= self.threshold:
            self.grok_step = trainer.global_step
            self._log(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log a grok step restored by a resume again, so that the new run's logs hold it."""
        if self.grok_step is not None:  # restored by a resume: the new run's logs say so too
            self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"grok/step": float(self.grok_step)}, step=self.grok_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"grok_step": self.grok_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.grok_step = state_dict["grok_step"]
