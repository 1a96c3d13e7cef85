"""Base of the callbacks that test the edge causally: at scheduled steps, change the selected weights
along Gram (or control) directions, evaluate on fixed validation batches, log and keep the results.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import lightning.pytorch as pl

from callbacks.evaluation import evaluation_batches, require_evaluable
from callbacks.gram_spectrum import GramSpectrum
from callbacks.run_results import log_scalars, write_json
from callbacks.schedule import ScheduledCallback
from callbacks.update_recorder import UpdateRecorder


class EdgeTestCallback(ScheduledCallback):
    """Finds the UpdateRecorder and GramSpectrum at fit start, evaluates on the first ``max_batches``
    batches of validation dataloader ``dataloader_idx`` (materialised once), writes ``json_name`` at fit end.

    Subclasses implement ``run(pl_module, batches) -> result``, ``scalars(result)`` and ``settings()``.
    """

    json_name = "edge_test.json"

    def __init__(self, steps: list[int], after_grok: list[int], dataloader_idx: int, max_batches: int | None,
                 json_path: str | None) -> None:
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"{type(self).__name__}: max_batches must be >= 1 or None, got {max_batches}")
        super().__init__(steps, after_grok)
        self.dataloader_idx = dataloader_idx
        self.max_batches = max_batches
        self.json_path = json_path
        self._batches: list[Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        require_evaluable(pl_module, type(self).__name__)
        self._recorder = UpdateRecorder.find(trainer)
        self._spectrum = GramSpectrum.find(trainer)
        self._batches = None

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        if self._batches is None:
            self._batches = evaluation_batches(trainer, pl_module, self.dataloader_idx, self.max_batches)
        result = self.run(pl_module, self._batches)
        log_scalars(trainer, self.scalars(result))
        return [result]

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            write_json(trainer, self.json_path, self.json_name, {**self.settings(), "results": self.results})

    @abstractmethod
    def run(self, pl_module: pl.LightningModule, batches: list[Any]) -> dict[str, Any]:
        """Measure on the current weights and restore them bit-exactly."""

    @abstractmethod
    def scalars(self, result: dict[str, Any]) -> dict[str, float]:
        """The logged scalars of one result."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What the JSON records beside the results."""
