"""Result files of the scheduled analyses, and the one record of a quantity that could not be measured.

Results keep NaN for quantities that do not exist (e.g. a direction the window lacks); JSON writes null.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


def unavailable(reason: str, nan_fields: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
    """A record that could not be measured: ``status="unavailable"``, the reason, ``fields`` as given and NaN
    (JSON null) for each of ``nan_fields``: never a zero effect."""
    return {"status": "unavailable", "reason": reason, **fields, **{name: math.nan for name in nan_fields}}


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, tuples -> lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def result_name(trainer: pl.Trainer, callback: Callback, stem: str) -> str:
    """``{stem}.json`` for the first callback of its class in the trainer, ``{stem}_{i}.json`` for the i-th after it
    (so two callbacks of one class never write the same file)."""
    same = [cb for cb in trainer.callbacks if type(cb) is type(callback)]
    i = next((k for k, cb in enumerate(same) if cb is callback), 0)
    return f"{stem}.json" if i == 0 else f"{stem}_{i}.json"


def write_results(trainer: pl.Trainer, callback: Callback, path: str | None, stem: str, payload: dict) -> str:
    """Write ``payload`` to ``path`` or ``{log_dir}/{result_name(stem)}``; return the path."""
    path = path or os.path.join(trainer.log_dir or trainer.default_root_dir, result_name(trainer, callback, stem))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe(payload), f, indent=1)
    return path
