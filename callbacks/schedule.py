"""When an analysis callback runs: at fixed optimizer steps and/or at offsets after the measured grok step.

API (small and stable; shared by the analysis callbacks):
    schedule = RunSchedule(steps=[200, 500], after_grok=[0, 800])
    schedule.start(trainer)          # in on_fit_start: rejects steps in the past, finds the GrokDetector if needed
    labels = schedule.due(trainer)   # labels due at trainer.global_step, e.g. ["step_500"], ["grok+0"]; [] if none
    schedule.mark_done(labels)       # after the run succeeded; done labels are never due again
    schedule.finish()                # in on_train_end, after a last `due`: warns about labels that never ran
    schedule.state_dict() / schedule.load_state_dict(state)   # done labels survive a resume

A label is due when ``trainer.global_step`` equals its target: the weights are those after that optimizer
step. Call ``due`` from ``on_train_batch_end``, ``on_train_batch_start`` and ``on_train_end`` (the step-g
weights are still in place there), so a "grok+0" found by the validation that follows step g, even the
last step, still runs on step g.
"""
from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.grok_detector import GrokDetector


class RunSchedule:
    """Explicit steps (``step_{s}``, s >= 1) and grok-relative offsets (``grok+{o}``, o >= 0).

    Args:
        steps: optimizer steps after which to run.
        after_grok: offsets, in optimizer steps, after the step at which ``GrokDetector`` saw grokking.
    """

    def __init__(self, steps: Sequence[int] = (), after_grok: Sequence[int] = ()) -> None:
        steps, after_grok = list(steps), list(after_grok)
        if not steps and not after_grok:
            raise ValueError("the schedule is empty: give `steps` and/or `after_grok`")
        for name, values, low in (("steps", steps, 1), ("after_grok", after_grok, 0)):
            if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise TypeError(f"schedule {name} must be integers, got {values}")
            if any(v < low for v in values):
                raise ValueError(f"schedule {name} must be >= {low}, got {values}")
            if len(set(values)) != len(values):
                raise ValueError(f"schedule {name} has duplicates: {values}")
        self.steps = sorted(steps)
        self.after_grok = sorted(after_grok)
        self.done: set[str] = set()
        self._detector: GrokDetector | None = None
        self._warned: set[str] = set()

    def start(self, trainer: pl.Trainer) -> None:
        """Validate against the trainer at fit start (after a resume has restored ``done`` and the grok step)."""
        if self.after_grok:
            self._detector = GrokDetector.find(trainer)
        now = trainer.global_step
        past = [label for label, target in self._targets() if target < now and label not in self.done]
        if past:
            raise ValueError(f"a schedule step in the past: {past} < global_step {now} at fit start; remove them")

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
