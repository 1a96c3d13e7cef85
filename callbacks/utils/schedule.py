"""When an analysis callback runs: at fixed optimizer steps and/or at offsets after the measured grok step.

``ScheduledCallback`` wires a ``RunSchedule`` into the Lightning hooks once; an analysis callback subclasses it
and implements ``measure``. The schedule on its own (small and stable):
    schedule = RunSchedule(steps=[200, 500], after_grok=[0, 800])
    schedule.attach(trainer)         # in setup: finds the GrokDetector if grok offsets need one (fails early)
    schedule.start(trainer)          # in on_train_start: rejects steps in the past (attaches too)
    labels = schedule.due(trainer)   # labels due at trainer.global_step, e.g. ["step_500"], ["grok+0"]; [] if none
    schedule.mark_done(labels)       # after the run succeeded; done labels are never due again
    schedule.finish()                # in on_train_end, after a last `due`: warns about labels that never ran
    schedule.state_dict() / schedule.load_state_dict(state)   # done labels survive a resume

A label is due when ``trainer.global_step`` equals its target: the weights are those after that optimizer
step. ``ScheduledCallback`` calls ``due`` from ``on_train_batch_end``, ``on_train_batch_start`` and
``on_train_end`` (the step-g weights are still in place there), so a "grok+0" found by the validation that
follows step g, even the last step, still runs on step g.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from ..utils.errors import ConfigurationError
from ..utils.protocols import GrokStepSource
from ..utils.trainer import find


GROK_HINT = "add callbacks.GrokDetector(monitor=..., threshold=...) to them (grok offsets need the grok step)"


class RunSchedule:
    """Explicit steps (``step_{s}``, s >= ``first_step``) and grok-relative offsets (``grok+{o}``, o >= 0).

    Args:
        steps: optimizer steps after which to run (0: before the first one).
        after_grok: offsets, in optimizer steps, after the step at which ``GrokDetector`` saw grokking.
        first_step: the smallest step allowed (1 for a measurement of trained weights).
    """

    def __init__(self, steps: Sequence[int] = (), after_grok: Sequence[int] = (), first_step: int = 1) -> None:
        steps, after_grok = list(steps), list(after_grok)
        if not steps and not after_grok:
            raise ConfigurationError("the schedule is empty: give `steps` and/or `after_grok`")
        for name, values, low in (("steps", steps, first_step), ("after_grok", after_grok, 0)):
            if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise ConfigurationError(f"schedule {name} must be integers, got {values}")
            if any(v < low for v in values):
                raise ConfigurationError(f"schedule {name} must be >= {low}, got {values}")
            if len(set(values)) != len(values):
                raise ConfigurationError(f"schedule {name} has duplicates: {values}")
        self.steps = sorted(steps)
        self.after_grok = sorted(after_grok)
        self.done: set[str] = set()
        self._detector: GrokStepSource | None = None
        self._warned: set[str] = set()

    def attach(self, trainer: pl.Trainer) -> None:
        """Find the trainer's ``GrokDetector`` when there are grok offsets; raises if it has none."""
        self._detector = find(trainer, GrokStepSource, GROK_HINT, "GrokDetector") if self.after_grok else None

    def start(self, trainer: pl.Trainer) -> None:
        """Attach, then reject targets already passed; call once a resume has restored the step, ``done`` and the
        grok step (``on_train_start``: Lightning restores ``global_step`` only after ``on_fit_start``)."""
        self.attach(trainer)
        now = trainer.global_step
        past = [label for label, target in self._targets() if target < now and label not in self.done]
        if past:
            raise ConfigurationError(f"a schedule step in the past: {past} < global_step {now} at train start; remove them")

    def due(self, trainer: pl.Trainer) -> list[str]:
        """Labels whose target is ``trainer.global_step`` and that are not done yet."""
        now = trainer.global_step
        labels = []
        for label, target in self._targets():
            if label in self.done:
                continue
            if target == now:
                labels.append(label)
            elif target < now and label not in self._warned:
                self._warned.add(label)
                rank_zero_warn(f"{label} (step {target}) was known only at step {now}: it is skipped")
        return labels

    def mark_done(self, labels: Sequence[str]) -> None:
        self.done.update(labels)

    def finish(self) -> list[str]:
        """Labels that never ran (training ended first, or grokking was never detected); warns once about them."""
        grok_known = self._detector is not None and self._detector.grok_step is not None
        never = [f"step_{s}" for s in self.steps] + [f"grok+{o}" for o in self.after_grok]
        never = [label for label in never if label not in self.done and label not in self._warned]
        if never:
            why = "" if grok_known or not self.after_grok else " (grokking was not detected)"
            rank_zero_warn(f"scheduled runs {never} never happened: training ended first{why}")
        return never

    def _targets(self) -> list[tuple[str, int]]:
        targets = [(f"step_{s}", s) for s in self.steps]
        grok = self._detector.grok_step if self._detector is not None else None
        if grok is not None:
            targets += [(f"grok+{o}", grok + o) for o in self.after_grok]
        return targets

    def state_dict(self) -> dict[str, Any]:
        return {"done": sorted(self.done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = set(state["done"])


class ScheduledCallback(Callback, ABC):
    """A callback that measures the model at the targets of a ``RunSchedule``; subclasses implement ``measure``.

    One measurement per step: labels that fall due later on the same step (``grok+0`` found by the validation
    after ``step_g`` ran) join that step's records. ``results`` and the done labels survive a resume.
    ``measure`` runs on rank zero only, unless a subclass sets ``on_every_rank`` (it changes the training itself).

    Args:
        steps: optimizer steps after which to measure.
        after_grok: offsets after the grok step (needs a ``GrokDetector``).
        first_step: the smallest step allowed.
    """

    on_every_rank = False

    def __init__(self, steps: Sequence[int] = (), after_grok: Sequence[int] = (), first_step: int = 1) -> None:
        self.schedule = RunSchedule(steps, after_grok, first_step)
        self.results: list[dict[str, Any]] = []

    @abstractmethod
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        """Measure (or act on) the current weights, log, and return the records of this run; each record
        gets ``step`` and ``labels`` added and is appended to ``results``."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the GrokDetector the grok offsets need, before training."""
        if stage == "fit":
            self.schedule.attach(trainer)  # a missing GrokDetector fails before training

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reject targets a resume has already passed."""
        self.schedule.start(trainer)  # not in on_fit_start: a resume restores global_step after it

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        """Run what is due at the current step (step 0, or a grok offset found by the last validation)."""
        self._run_due(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Run what is due right after the optimizer step that reached it."""
        self._run_due(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Run what the last validation made due, then warn about targets that never ran."""
        self._run_due(trainer, pl_module)  # grokking seen by the validation after the last step
        self.schedule.finish()

    def _run_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        labels = self.schedule.due(trainer)
        if not labels:
            return
        if trainer.is_global_zero or self.on_every_rank:
            now = trainer.global_step
            same = [r for r in self.results if r["step"] == now]
            for record in same:  # the weights were measured at this step already
                record["labels"] = record["labels"] + labels
            if not same:
                self.results += [{**r, "step": now, "labels": list(labels)} for r in self.measure(trainer, pl_module)]
        self.schedule.mark_done(labels)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "results": self.results}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict["schedule"])
        self.results = state_dict["results"]
