"""Change the optimizer's weight decay at given steps (the intervention of docs/methods.md §9, as a callback).

Unlike the reference, which restarted a fresh AdamW, the optimizer state is kept by default, so the
only change is ω; ``reset_optimizer_state=True`` also clears the moments and step counters as it did.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from .utils.errors import ConfigurationError
from .utils.schedule import ScheduledCallback
from .utils.trainer import log_scalars


class WeightDecaySchedule(ScheduledCallback):
    """Set ``weight_decay`` of the chosen param groups when ``trainer.global_step`` reaches a milestone.

    A milestone ``s: ω`` is a ``RunSchedule`` step: it is applied while ``global_step == s``, after optimizer step s
    (s = 0: before the first step), so the optimizer step number s + 1 is the first to use ω. It runs on every
    rank and logs ``wd/group{i}`` at step s for every group it changes (rank zero).

    Args:
        milestones: {global step: new weight decay (>= 0)}.
        param_groups: indices of the optimizer's param groups to change; None: all groups.
        reset_optimizer_state: also clear ``optimizer.state`` (Adam moments and step counts) at each milestone,
            as the reference's fresh-optimizer restart did.

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import WeightDecaySchedule

        # weight decay 0 from optimizer step 1001 on, in every param group
        trainer = Trainer(callbacks=[WeightDecaySchedule({1000: 0.0})])
    """

    on_every_rank = True

    def __init__(
        self, milestones: dict[int, float], param_groups: list[int] | None = None, reset_optimizer_state: bool = False
    ) -> None:
        if not milestones:
            raise ConfigurationError("WeightDecaySchedule: give at least one milestone {step: weight_decay}")
        for step, wd in milestones.items():
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ConfigurationError(f"WeightDecaySchedule: milestone steps must be integers >= 0, got {step!r}")
            if not wd >= 0:
                raise ConfigurationError(f"WeightDecaySchedule: weight decay must be >= 0, got {wd} at step {step}")
        if param_groups is not None and (not param_groups or len(set(param_groups)) != len(param_groups)):
            raise ConfigurationError(
                f"WeightDecaySchedule: param_groups must be distinct indices (or None for all), got {param_groups}"
            )
        self.milestones = {int(step): float(wd) for step, wd in sorted(milestones.items())}
        super().__init__(steps=list(self.milestones), first_step=0)
        self.param_groups = None if param_groups is None else list(param_groups)
        self.reset_optimizer_state = reset_optimizer_state

    @property
    def fired(self) -> set[int]:
        """The milestone steps already applied."""
        return {int(label.removeprefix("step_")) for label in self.schedule.done}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(milestones=self.milestones, param_groups=self.param_groups)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the optimizer and the param group indices before the first step."""
        if len(trainer.optimizers) != 1:
            raise ConfigurationError(
                f"WeightDecaySchedule supports exactly one optimizer, the trainer has {len(trainer.optimizers)}"
            )
        n_groups = len(trainer.optimizers[0].param_groups)
        bad = [i for i in self.param_groups or [] if not 0 <= i < n_groups]
        if bad:
            raise ConfigurationError(
                f"WeightDecaySchedule: param group {bad[0]} is out of range; the optimizer has {n_groups} groups"
            )

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        """Apply the milestone of this step to the optimizer (every rank); log the new values (rank zero)."""
        wd = self.milestones[trainer.global_step]
        optimizer = trainer.optimizers[0]
        chosen = range(len(optimizer.param_groups)) if self.param_groups is None else self.param_groups
        for i in chosen:
            optimizer.param_groups[i]["weight_decay"] = wd
        if self.reset_optimizer_state:
            optimizer.state.clear()
        if trainer.is_global_zero:
            log_scalars(trainer, {f"wd/group{i}": wd for i in chosen})
        return [{"weight_decay": wd, "param_groups": list(chosen)}]
