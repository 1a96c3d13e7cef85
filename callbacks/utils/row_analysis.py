"""Shared plumbing of the callbacks that analyse each completed update row of an UpdateRecorder.

A subclass says which inner products it needs when a row arrives (device work inside the optimizer
hook, no host sync) and how to turn them into scalars (host work, later); this base labels each row
with its trainer.global_step, logs it to every logger on rank zero, and keeps latest values and history.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from callbacks.update_recorder import RowEvent, UpdateRecorder
from callbacks.utils.errors import ConfigurationError

LAYOUT_CATEGORY = "spectral edge"


class RowAnalysis(Callback, ABC):
    """Base class: per-row products → (later) scalars → loggers, ``latest`` and an optional ``.npz`` history."""

    def __init__(self, top_k: int = 5, history_path: Optional[str] = None) -> None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigurationError(f"top_k must be an integer >= 1 (directions to report), got {top_k!r}")
        self.top_k = top_k
        self.history_path = history_path
        self._recorder: Optional[UpdateRecorder] = None
        self._trainer: Optional[pl.Trainer] = None
        self._rows_seen = 0  # rows turned into scalars
        self._pending: list[tuple[int, int, Tensor]] = []  # (row index, recorder steps, products on device)
        self._unpublished: list[tuple[int, dict]] = []  # (step, metrics) not yet logged
        self._history: list[tuple[int, dict]] = []  # logged (step, metrics), kept when history_path is set
        self._latest: dict[str, float] = {}
        self._last_step: Optional[int] = None
        self._last_logged_step: Optional[int] = None

    # ---------------------------------------------------------------- for subclasses
    @abstractmethod
    def _row_products(self, event: RowEvent) -> Tensor:
        """Partial inner products [n] this analysis needs from the new row (device, no sync)."""

    @abstractmethod
    def _absorb(self, index: int, products: Tensor) -> dict[str, float]:
        """Update the small host state with row ``index``'s summed products (float64) and return its scalars."""

    def custom_scalar_charts(self) -> dict[str, list]:
        """TensorBoard multiline charts, ``{title: ["Multiline", [tags]]}``."""
        return {}

    def _analysis_state(self) -> dict[str, Any]:
        return {}

    def _load_analysis_state(self, state: dict[str, Any]) -> None:
        pass

    # ---------------------------------------------------------------- wiring
    def bind(self, recorder: UpdateRecorder, trainer: Optional["pl.Trainer"] = None) -> None:
        """Listen to ``recorder``'s rows; with a trainer, rows are labelled by trainer.global_step."""
        if self.top_k > recorder.window:
            raise ConfigurationError(
                f"{type(self).__name__}(top_k={self.top_k}) exceeds UpdateRecorder(window={recorder.window}): "
                "lower top_k or raise window"
            )
        self._recorder, self._trainer = recorder, trainer
        recorder.add_row_listener(self._on_row)

    def _on_row(self, event: RowEvent) -> None:
        if event.index != self._rows_seen + len(self._pending):
            raise RuntimeError(
                f"{type(self).__name__} has seen {self._rows_seen + len(self._pending)} rows but the UpdateRecorder "
                f"is at row {event.index}: restore both from the same checkpoint"
            )
        products = self._recorder.all_reduce(self._row_products(event))
        self._pending.append((event.index, event.steps, products))

    def _process(self) -> None:
        while self._pending:
            index, steps, products = self._pending.pop(0)
            metrics = self._absorb(index, products.detach().to("cpu", torch.float64))
            self._rows_seen = index + 1
            step = steps
            if self._trainer is not None:  # the recorder's step count can lag global_step (AMP skips, late attach)
                step = self._trainer.global_step - (self._recorder.steps_done - steps)
            self._unpublished.append((step, metrics))
            self._latest, self._last_step = metrics, step

    @property
    def latest(self) -> dict[str, float]:
        """Scalars of the latest completed row (the logged names, e.g. ``edge/sigma_1``)."""
        self._process()
        return dict(self._latest)

    @property
    def last_step(self) -> Optional[int]:
        """trainer.global_step at which the latest row completed (None before the first row)."""
        self._process()
        return self._last_step

    def publish(self, trainer: Optional["pl.Trainer"] = None) -> list[tuple[int, dict]]:
        """Turn pending rows into scalars, log them (rank zero of ``trainer``) and return them as (step, metrics).

        Like Lightning's own logging, loggers get at most one row per ``trainer.log_every_n_steps`` steps
        (the first row completing in each such span); ``latest`` and the ``.npz`` history keep every row.
        """
        self._process()
        out, self._unpublished = self._unpublished, []
        if trainer is not None and trainer.is_global_zero:
            every = max(1, trainer.log_every_n_steps)
            for step, metrics in out:
                if self._last_logged_step is not None and step // every <= self._last_logged_step // every:
                    continue
                self._last_logged_step = step
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=step)
        if self.history_path is not None:
            self._history.extend(out)
        return out

    def save_history(self, path: str) -> None:
        """Every logged scalar vs step: ``name -> float64 [n, 2]`` (columns step, value) in one ``.npz``."""
        names = sorted({name for _, metrics in self._history for name in metrics})
        arrays = {
            name: np.array([(s, m[name]) for s, m in self._history if name in m], dtype=np.float64).reshape(-1, 2)
            for name in names
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        np.savez(path, **arrays)

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self.bind(UpdateRecorder.find(trainer), trainer)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        analyses = [cb for cb in trainer.callbacks if isinstance(cb, RowAnalysis)]
        if not trainer.is_global_zero or analyses[0] is not self:
            return  # the first analysis writes one layout for all of them
        charts: dict[str, list] = {}
        for cb in analyses:
            charts.update(cb.custom_scalar_charts())
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and charts:
                logger.experiment.add_custom_scalars({LAYOUT_CATEGORY: charts})

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *args: Any) -> None:
        self.publish(trainer)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.publish(trainer)
        if self.history_path is not None and trainer.is_global_zero:
            path = self.history_path
            if not os.path.isabs(path):
                path = os.path.join(trainer.log_dir or trainer.default_root_dir, path)
            self.save_history(path)

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        self._process()
        return {
            "rows_seen": self._rows_seen,
            "unpublished": list(self._unpublished),
            "history": list(self._history),
            "latest": dict(self._latest),
            "last_step": self._last_step,
            "last_logged_step": self._last_logged_step,
            **self._analysis_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = []
        self._rows_seen = state_dict["rows_seen"]
        self._unpublished = list(state_dict["unpublished"])
        self._history = list(state_dict["history"])
        self._latest, self._last_step = dict(state_dict["latest"]), state_dict["last_step"]
        self._last_logged_step = state_dict["last_logged_step"]
        self._load_analysis_state(state_dict)
