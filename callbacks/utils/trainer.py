"""What the callbacks ask of the Trainer: the one callback of a kind among its callbacks, and its loggers."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import lightning.pytorch as pl

from ..utils.errors import ConfigurationError

T = TypeVar("T")


def find(
    trainer: pl.Trainer, kind: type[T], hint: str, name: str | None = None, where: Callable[[Any], bool] | None = None
) -> T:
    """The one callback of ``trainer`` that is a ``kind`` (a class or a runtime-checkable protocol) and, with
    ``where``, that ``where`` accepts.

    Raises a ``ConfigurationError`` naming ``name`` (default: the class name) and ``hint`` (the fix) when there is
    none or more than one.
    """
    name = name or kind.__name__
    found = [cb for cb in trainer.callbacks if isinstance(cb, kind) and (where is None or where(cb))]
    if not found:
        raise ConfigurationError(f"no {name} in trainer.callbacks: exactly one {name} is needed; {hint}")
    if len(found) > 1:
        raise ConfigurationError(f"expected exactly one {name} in trainer.callbacks, found {len(found)}: {hint}")
    return found[0]


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Send scalars to every logger at the current step (callers run on rank zero only)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def find_named(trainer: pl.Trainer, kind: type[T], name: str | None, argument: str) -> T:
    """The callback of ``trainer`` that is a ``kind`` with ``.name == name`` (None: the only one); a
    ConfigurationError naming the choices and the ``argument`` that picks one otherwise."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, kind)]
    names = [getattr(cb, "name", None) for cb in found]
    if name is None:
        if len(found) == 1:
            return found[0]
        raise ConfigurationError(
            f"{len(found)} {kind.__name__}s in trainer.callbacks (names {names}): name each one and pass "
            f"{argument}=<name> to say which, e.g. {argument}={next((n for n in names if n), 'name')!r}"
        )
    chosen = [cb for cb, n in zip(found, names) if n == name]
    if len(chosen) != 1:
        raise ConfigurationError(
            f"{argument}={name!r} but trainer.callbacks has {len(chosen)} {kind.__name__} named so (names {names}): "
            f"use one of those names, or add {kind.__name__}(name={name!r})"
        )
    return chosen[0]
