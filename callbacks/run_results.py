"""What the ablation and perturbation callbacks share around a run: eval mode, logging and the JSON file.

Results keep NaN for quantities that do not exist (e.g. a direction the window lacks); JSON writes null.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from typing import Any, Iterator

import lightning.pytorch as pl


@contextmanager
def eval_mode(pl_module: pl.LightningModule) -> Iterator[None]:
    """Evaluate with dropout off; restore the module's training flag afterwards, even on error."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        yield
    finally:
        pl_module.train(was_training)


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Send scalars to every logger at the current step (callers run on rank zero only)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, tuples -> lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(trainer: pl.Trainer, path: str | None, default_name: str, payload: dict) -> str:
    """Write ``payload`` to ``path`` or ``{log_dir}/{default_name}``; return the path."""
    path = path or os.path.join(trainer.log_dir or trainer.default_root_dir, default_name)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe(payload), f, indent=1)
    return path
