"""Change the optimizer's weight decay at given steps (the intervention of docs/methods.md §9, as a callback).

Unlike the reference, which restarted a fresh AdamW, the optimizer state is kept by default, so the
only change is ω; ``reset_optimizer_state=True`` also clears the moments and step counters as it did.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from callbacks.utils.errors import ConfigurationError
from callbacks.utils.trainer import log_scalars


class WeightDecaySchedule(Callback):
    """Set ``weight_decay`` of the chosen param groups when ``trainer.global_step`` reaches a milestone.

    A milestone ``s: ω`` is applied in ``on_train_batch_start`` while ``global_step == s``, before that batch's
    optimizer step: the optimizer step number s + 1 is the first to use ω (s = 0: from the first step). Logs
    ``wd/group{i}`` at step s for every group it changes.

    Args:
        milestones: {global step: new weight decay (>= 0)}.
        param_groups: indices of the optimizer's param groups to change; None: all groups.
        reset_optimizer_state: also clear ``optimizer.state`` (Adam moments and step counts) at each milestone,
            as the reference's fresh-optimizer restart did.
    """

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
            raise ConfigurationError(f"WeightDecaySchedule: param_groups must be distinct indices (or None for all), got {param_groups}")
        self.milestones = {int(step): float(wd) for step, wd in sorted(milestones.items())}
        self.param_groups = None if param_groups is None else list(param_groups)
        self.reset_optimizer_state = reset_optimizer_state
        self.fired: set[int] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(milestones=self.milestones, param_groups=self.param_groups)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigurationError(f"WeightDecaySchedule supports exactly one optimizer, the trainer has {len(trainer.optimizers)}")
        n_groups = len(trainer.optimizers[0].param_groups)
        bad = [i for i in self.param_groups or [] if not 0 <= i < n_groups]
        if bad:
            raise ConfigurationError(f"WeightDecaySchedule: param group {bad[0]} is out of range; the optimizer has {n_groups} groups")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = trainer.global_step
        past = [step for step in self.milestones if step < now and step not in self.fired]
        if past:
            raise ConfigurationError(
                f"WeightDecaySchedule: milestone step {past[0]} is in the past (global_step {now} at the start of training)"
            )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step not in self.milestones or step in self.fired:
            return
        optimizer = trainer.optimizers[0]
        chosen = range(len(optimizer.param_groups)) if self.param_groups is None else self.param_groups
        changed = {}
        for i in chosen:
            optimizer.param_groups[i]["weight_decay"] = self.milestones[step]
            changed[f"wd/group{i}"] = self.milestones[step]
        if self.reset_optimizer_state:
            optimizer.state.clear()
        self.fired.add(step)
        if trainer.is_global_zero:
            log_scalars(trainer, changed)

    def state_dict(self) -> dict[str, Any]:
        return {"fired": sorted(self.fired)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fired = set(state_dict["fired"])
