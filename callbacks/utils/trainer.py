"""What the callbacks ask of the Trainer: the one callback of a kind among its callbacks, and its loggers."""
from __future__ import annotations

from typing import TypeVar

import lightning.pytorch as pl

from ..utils.errors import ConfigurationError

T = TypeVar("T")


def find(trainer: pl.Trainer, kind: type[T], hint: str, name: str | None = None) -> T:
    """The one callback of ``trainer`` that is a ``kind`` (a class or a runtime-checkable protocol).

    Raises a ``ConfigurationError`` naming ``name`` (default: the class name) and ``hint`` (the fix) when there is
    none or more than one.
    """
    name = name or kind.__name__
    found = [cb for cb in trainer.callbacks if isinstance(cb, kind)]
    if not found:
        raise ConfigurationError(f"no {name} in trainer.callbacks: exactly one {name} is needed; {hint}")
    if len(found) > 1:
        raise ConfigurationError(f"expected exactly one {name} in trainer.callbacks, found {len(found)}: {hint}")
    return found[0]


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Send scalars to every logger at the current step (callers run on rank zero only)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
