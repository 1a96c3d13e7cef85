"""Save the random generators with every checkpoint and restore them when training resumes.

Lightning checkpoints hold weights, optimizer and loop state but not the global RNGs (torch CPU and
device generators, numpy, python); without them a resumed run draws other dropout masks, noise, etc.
"""
from __future__ import annotations

import random
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class RNGStates(Callback):
    """Keep torch (CPU and CUDA), numpy and python RNG states in checkpoints; restore them at train start.

    The states are those of the moment the checkpoint is written (after an optimizer step); they are put
    back in ``on_train_start``, just before the first resumed step. Repeatable means: same machine, same
    thread count, same library versions.

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import RNGStates

        trainer = Trainer(callbacks=[RNGStates()], max_steps=10)
    """

    def __init__(self) -> None:
        self._to_restore: Optional[dict[str, Any]] = None

    @override
    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # keys as a tensor: loadable with weights_only
        numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = dict(state_dict)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put the checkpoint's generators back: nothing between restore and the first step may draw."""
        if self._to_restore is None:
            return
        state, self._to_restore = self._to_restore, None
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
